"""Resume, exactly once: the driver is SIGKILLed mid-run, one finished object is deleted and another
corrupted, and the same command run again finishes the job with one object and one manifest row per
row. A third run of the same command does nothing twice; a different job into the output is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.jobs.cli import EXIT_JOB_ERROR, EXIT_OK, main
from tests.helpers import write_table
from tests.integration.exactly_once import check_output, check_summary, cli_command, session_env

pytestmark = pytest.mark.slow

ROWS = 10
IDS = [f"r-{i:02d}" for i in range(ROWS)]
JOB = """
output:
  manifest_rows_per_part: 1
  manifest_flush_seconds: 0.1
stages:
  encode: {batch_size: 4, num_cpus: 0.5, torch_threads: 1}
  denoise: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
  decode: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
"""


def manifest_rows(out) -> list[dict]:
    folder = out / "manifest"
    parts = sorted(p for p in folder.glob("*.parquet")) if folder.exists() else []
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def resumed(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    table = write_table(folder / "prompts.parquet", [{"id": i, "prompt": f"prompt {i}"} for i in IDS])
    job = folder / "job.yaml"
    job.write_text(JOB)
    out = folder / "out"
    command = cli_command(job, "--input", str(table), "--output", str(out))
    env = session_env(LATENTMILL_FAULTS="denoise:sleep:0.5")

    # 1. Start the job and SIGKILL the driver once a few manifest rows are in.
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while len(manifest_rows(out)) < 3:
        assert driver.poll() is None, f"the job ended before it could be killed:\n{driver.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no manifest rows after 400 s"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    time.sleep(2)  # the killed job's actors finish dying
    before = {row[schema.ID]: row for row in manifest_rows(out)}
    assert 3 <= len(before) < ROWS, f"{len(before)} rows were finished when the driver died"
    assert not (out / "summary.json").exists()

    # 2. Damage two finished outputs: one object deleted, one overwritten with other bytes.
    deleted, corrupted = sorted(before)[:2]
    (out / "media" / f"{deleted}.png").unlink()
    (out / "media" / f"{corrupted}.png").write_bytes(b"not the image the manifest names")

    # 3. The same command again, in this process on the same Ray (the same `main`; nothing is killed now).
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(command[3:])
    assert code == EXIT_OK, stderr.getvalue()[-3000:]
    return {"out": out, "command": command, "before": before, "deleted": deleted,
            "corrupted": corrupted, "second_stdout": stdout.getvalue(), "table": table}


def test_the_same_command_after_a_driver_kill_finishes_exactly_once(resumed):
    out, before = resumed["out"], resumed["before"]
    output = check_output(str(out), set(IDS), set(), already_done=len(before) - 2)
    check_summary(output.summary, rows=ROWS, outputs=ROWS - len(before) + 2, failed=0, already_done=len(before) - 2)
    assert output.summary["resumed"] is True
    assert "already done" in resumed["second_stdout"]


def test_deleted_and_corrupted_objects_are_generated_again_with_one_manifest_row(resumed):
    out = resumed["out"]
    rows = manifest_rows(out)
    for row_id in (resumed["deleted"], resumed["corrupted"]):
        [row] = [r for r in rows if r[schema.ID] == row_id]
        data = (out / "media" / f"{row_id}.png").read_bytes()
        assert data != b"not the image the manifest names"
        assert hashlib.sha256(data).hexdigest() == row[schema.SHA256]
        # Same row, same seed, same bytes as the first run made.
        assert row[schema.SHA256] == resumed["before"][row_id][schema.SHA256]


def test_a_different_job_into_the_same_output_is_refused(resumed, capsys):
    out = resumed["out"]
    parts = sorted(p.name for p in (out / "manifest").iterdir())
    code = main(["run", "--no-progress", "--input", str(resumed["table"]), "--output", str(out), "--steps", "3"])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR
    assert f"the output {out} holds results of a different job" in err
    assert "Write to a new output, or delete that folder to start over" in err
    assert "re-running the original command resumes it" in err
    assert sorted(p.name for p in (out / "manifest").iterdir()) == parts  # nothing was touched


def test_the_same_command_on_a_finished_output_does_nothing_twice(resumed, capsys):
    out = resumed["out"]
    media = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "media").iterdir()}
    parts = sorted(p.name for p in (out / "manifest").iterdir())
    code = main(resumed["command"][3:])
    assert code == EXIT_OK, capsys.readouterr().err[-3000:]
    output = check_output(str(out), set(IDS), set(), already_done=ROWS)
    check_summary(output.summary, rows=ROWS, outputs=0, failed=0, already_done=ROWS)
    assert sorted(p.name for p in (out / "manifest").iterdir()) == parts  # no new manifest part
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "media").iterdir()} == media
