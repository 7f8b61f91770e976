"""A finished local output resumes from any working directory, and a finished resume needs no Ray.

One real run writes `out/demo` relative to its working directory. Then: the same folder resumed from
another directory finds every output (nothing generated again, no empty manifest part); a manifest
part whose every object is gone is removed rather than left empty; and a resume with every row done
finishes without connecting to Ray at all (RAY_ADDRESS names an address where nothing listens), while
one row more does need Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.jobs.cli import EXIT_JOB_ERROR, EXIT_OK, main
from tests.helpers import write_table
from tests.integration.exactly_once import check_output, cli_command, session_env

pytestmark = pytest.mark.slow

ROWS = [{"id": f"r{i}", "prompt": f"a red cube, take {i}"} for i in range(4)]
ROWS += [{"id": None, "prompt": "an id derived from the content"}, {"id": None, "prompt": "and one more", "seed": 7}]
JOB = """
defaults: {num_inference_steps: 2}
stages:
  encode: {batch_size: 4, num_cpus: 0.5, torch_threads: 1}
  denoise: {batch_size: 2, num_cpus: 0.5, torch_threads: 1}
  decode: {batch_size: 2, num_cpus: 0.5, torch_threads: 1}
"""


def manifest_parts(out):
    return sorted((out / "manifest").glob("*.parquet"))


def manifest_rows(out) -> list[dict]:
    return [row for part in manifest_parts(out) for row in pq.read_table(part).to_pylist()]


def closed_port_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("anywhere")
    table = write_table(base / "prompts.parquet", ROWS)
    job = base / "job.yaml"
    job.write_text(JOB)
    # The CLI's `main` in this process on the session's Ray, from the folder the output is relative to.
    here = os.getcwd()
    os.chdir(base)
    try:
        assert main(cli_command(job, "--input", str(table), "--output", "out/demo")[3:]) == EXIT_OK
    finally:
        os.chdir(here)
    out = base / "out" / "demo"
    rows = manifest_rows(out)
    assert len(rows) == len(ROWS)
    return {"base": base, "table": table, "job": job, "out": out, "ids": {row[schema.ID] for row in rows}}


def test_a_resume_from_another_directory_finds_every_output(finished, monkeypatch, capsys, caplog):
    out = finished["out"]
    assert all(row[schema.OUTPUT_URI].startswith(str(out) + "/media/") for row in manifest_rows(out))
    parts = manifest_parts(out)
    elsewhere = finished["base"] / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with caplog.at_level(logging.INFO, logger="latentmill"):
        code = main(cli_command(finished["job"], "--input", str(finished["table"]), "--output", "../out/demo")[3:])
    stderr = capsys.readouterr().err + caplog.text
    assert code == EXIT_OK, stderr[-3000:]
    assert "already done" in caplog.text  # the log lines are captured here
    assert "missing or changed object" not in stderr
    check_output(str(out), finished["ids"], set(), already_done=len(ROWS))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["outputs_written"], summary["already_done"]) == (0, len(ROWS))
    assert summary["output_uri"] == str(out)
    assert manifest_parts(out) == parts
    assert all(pq.read_metadata(part).num_rows > 0 for part in manifest_parts(out))


def test_a_manifest_part_whose_objects_are_all_gone_is_removed_not_left_empty(finished):
    out = finished["out"]
    template = pq.read_table(manifest_parts(out)[0]).slice(0, 1).to_pylist()[0]
    ghost = dict(template, id="ghost", output_uri=str(out / "media" / "ghost.png"))
    ghost_part = out / "manifest" / "part-19990101T000000-ghost0-00000.parquet"
    pq.write_table(pa.Table.from_pylist([ghost], schema=pq.read_schema(manifest_parts(out)[0])), ghost_part)
    env = dict(session_env(), RAY_ADDRESS=closed_port_address())  # every table row is done: no Ray needed
    resumed = subprocess.run(cli_command(finished["job"], "--input", str(finished["table"]), "--output", str(out)),
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    assert "1 manifest row(s) name a missing or changed object" in resumed.stderr
    assert not ghost_part.exists()
    assert all(pq.read_metadata(part).num_rows > 0 for part in manifest_parts(out))
    check_output(str(out), finished["ids"], set(), already_done=len(ROWS))


def test_a_finished_resume_does_not_start_ray(finished):
    out, table = finished["out"], finished["table"]
    parts = manifest_parts(out)
    env = dict(session_env(), RAY_ADDRESS=closed_port_address())  # a run that needs Ray stops: nothing listens there
    started = time.monotonic()
    resumed = subprocess.run(cli_command(finished["job"], "--input", str(table), "--output", str(out)),
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    assert time.monotonic() - started < 120
    assert "Ray is not started" in resumed.stderr
    assert re.search(rf"already done\s+{len(ROWS)}\n", resumed.stdout), resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["requests"], summary["outputs_written"], summary["already_done"],
            summary["rows_failed"]) == (len(ROWS), len(ROWS), 0, len(ROWS), 0)
    assert manifest_parts(out) == parts

    # A row that is not done yet (same table file, so the same job) does need Ray.
    original = table.read_bytes()
    try:
        write_table(table, ROWS + [{"id": "new", "prompt": "not rendered yet"}])
        pending = subprocess.run(cli_command(finished["job"], "--input", str(table), "--output", str(out)),
                                 env=env, capture_output=True, text=True, timeout=600)
        assert pending.returncode == EXIT_JOB_ERROR
        assert "cannot reach the Ray cluster at 127.0.0.1:" in pending.stderr
        # A duplicate id is an error row only validation in Ray reports: not "done" either.
        write_table(table, ROWS + [ROWS[0]])
        duplicate = subprocess.run(cli_command(finished["job"], "--input", str(table), "--output", str(out)),
                                   env=env, capture_output=True, text=True, timeout=600)
        assert duplicate.returncode == EXIT_JOB_ERROR
        assert "cannot reach the Ray cluster" in duplicate.stderr
    finally:
        table.write_bytes(original)
