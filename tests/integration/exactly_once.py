"""The checks every fault-injection test ends with: nothing lost, nothing twice.

`check_output` reads an output folder or prefix (local or s3://) the way a user would and asserts:
exactly one media object and one manifest row per expected output id, one error row per expected
failed id, no id both done and failed, every manifest row's object complete (sha256 and size), no
object under media/ that the manifest does not name, no temporary file anywhere, and a summary
whose counts add up.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentmill import schema
from latentmill.io import storage
from tests.helpers import read_parquet_folder


@dataclass
class Output:
    fs: Any
    root: str  # fs path of the output (no protocol)
    manifest: dict[str, dict]  # id -> manifest row
    errors: dict[str, dict]  # id -> error row
    summary: dict  # summary.json
    media: list[str]  # fs paths under media/


def _rows_by_id(table) -> tuple[dict[str, dict], list[str]]:
    rows = table.to_pylist() if table is not None else []
    ids = [row[schema.ID] for row in rows]
    return {row[schema.ID]: row for row in rows}, ids


def read_output(uri: str, storage_options: dict | None = None) -> tuple[Output, list[str], list[str]]:
    fs, root = storage.resolve(uri, storage_options or {})
    manifest, manifest_ids = _rows_by_id(read_parquet_folder(fs, storage.join(root, "manifest")))
    errors, error_ids = _rows_by_id(read_parquet_folder(fs, storage.join(root, "errors")))
    summary_path = storage.join(root, "summary.json")
    summary = json.loads(fs.cat_file(summary_path)) if fs.exists(summary_path) else {}
    media_root = storage.join(root, "media")
    media = sorted(fs.find(media_root)) if fs.exists(media_root) else []
    return Output(fs, root, manifest, errors, summary, media), manifest_ids, error_ids


def check_output(uri: str, outputs: set[str], failed: set[str] | None = None,
                 storage_options: dict | None = None, already_done: int | None = None) -> Output:
    """Assert the exactly-once invariants of the output at `uri`; returns what it read."""
    out, manifest_ids, error_ids = read_output(uri, storage_options)
    fs, root = out.fs, out.root

    # One manifest row per output id, no more, no fewer.
    duplicates = {i for i in manifest_ids if manifest_ids.count(i) > 1}
    assert not duplicates, f"ids with more than one manifest row: {sorted(duplicates)[:5]}"
    assert set(out.manifest) == outputs, (
        f"manifest ids differ: missing {sorted(outputs - set(out.manifest))[:5]}, "
        f"unexpected {sorted(set(out.manifest) - outputs)[:5]}"
    )
    # One error row per failed id; an id is an output and an error only where expected (a duplicate
    # id: its first row is generated, the second is an error row).
    if failed is not None:
        duplicates = {i for i in error_ids if error_ids.count(i) > 1}
        assert not duplicates, f"ids with more than one error row: {sorted(duplicates)[:5]}"
        assert set(out.errors) == failed, (
            f"error ids differ: missing {sorted(failed - set(out.errors))[:5]}, "
            f"unexpected {sorted(set(out.errors) - failed)[:5]}"
        )
        assert set(out.manifest) & set(out.errors) == outputs & failed

    # Every object the manifest names is complete, under media/, and named after its own id.
    media_prefix = storage.join(root, "media") + "/"
    named = set()
    for row_id, row in out.manifest.items():
        object_fs, path = storage.resolve(row[schema.OUTPUT_URI], storage_options or {})
        assert path.startswith(media_prefix), f"{row_id!r}: {path} is outside {media_prefix}"
        key = path[len(media_prefix):]
        assert "/" not in key and posixpath.normpath(path) == path.rstrip("/")
        assert key.rsplit(".", 1)[0] == storage.safe_key(row_id)
        data = object_fs.cat_file(path)
        assert len(data) == row[schema.BYTES], f"{row_id!r}: object size differs from the manifest"
        assert hashlib.sha256(data).hexdigest() == row[schema.SHA256], f"{row_id!r}: object differs"
        named.add(path.lstrip("/"))
    # Nothing else under media/: no second object, no partial object, no temporary file.
    listed = {path.lstrip("/") for path in out.media}
    assert listed == named, f"objects the manifest does not name: {sorted(listed - named)[:5]}"
    assert len(out.media) == len(out.manifest)
    leftovers = [p for p in fs.find(root) if posixpath.basename(p).startswith(".") or p.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers[:5]}"

    # The summary's counts add up (one sample per prompt).
    if out.summary:
        s = out.summary
        assert s["rows_read"] == s["outputs_written"] + s["already_done"] + s["rows_failed"], s
        assert s["rows_read"] == s["requests"]
        if failed is not None:
            assert s["rows_failed"] == len(failed)
            assert s["outputs_written"] + s["already_done"] == len(outputs)
        if already_done is not None:
            assert s["already_done"] == already_done
    return out


def check_summary(summary, rows: int, outputs: int, failed: int, already_done: int = 0) -> None:
    """A RunSummary object (in-process runs) or summary.json dict."""
    get = (lambda k: summary[k]) if isinstance(summary, dict) else (lambda k: getattr(summary, k))
    got = tuple(get(k) for k in ("rows_read", "outputs_written", "rows_failed", "already_done"))
    assert got == (rows, outputs, failed, already_done), got
    assert get("rows_read") == get("outputs_written") + get("already_done") + get("rows_failed")


def job_config(input_uri: str, output_uri: str, model: str = "builtin:tiny-image", batch_size: int = 4,
               **sections):
    """A validated job with every pool at `batch_size` (small pools for the 2-core test machine)."""
    from latentmill.config import load_config

    pool = {"batch_size": batch_size, "num_cpus": 0.5, "torch_threads": 1}
    overrides: dict[str, Any] = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri},
        "model": {"path": model},
        "stages": {"encode": dict(pool), "denoise": dict(pool), "decode": dict(pool)},
        "ray": {"progress_bars": False},
    }
    for section, values in sections.items():
        if section == "stages":
            for stage, settings in values.items():
                overrides["stages"][stage].update(settings)
        else:
            overrides.setdefault(section, {}).update(values)
    return load_config(None, overrides)


def run(input_uri: str, output_uri: str, on_progress=None, **kwargs):
    """Run the job in this process (on the session's Ray); returns its RunSummary."""
    from latentmill.pipelines.job import run_job

    return run_job(job_config(input_uri, output_uri, **kwargs), on_progress=on_progress)


def cli_command(job_file, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "latentmill.jobs.cli", "run", "--no-progress", "--config", str(job_file), *args]


def session_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess attached to this test session's Ray instance."""
    import os

    import ray

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, **extra)
    env.pop("LATENTMILL_FAULTS", None)
    env.update(extra)
    return env


def stage_actors(stage_class: str, this_driver: bool = True) -> list[dict]:
    """Actors of one stage worker class (e.g. "DenoiseWorker") from the GCS: those of runs started in
    this process (not those of CLI subprocesses attached to the same Ray), or all."""
    import ray
    import ray._private.state

    job = ray.get_runtime_context().get_job_id()
    return [info for info in ray._private.state.actors().values()
            if stage_class in info["ActorClassName"] and (not this_driver or info["JobID"] == job)]


def wait_for_actor_log(pattern: str, also_in: str = "", timeout: float = 30.0) -> bool:
    """Whether the regular expression `pattern` matches `also_in` (a driver's output) or this Ray
    session's worker logs within `timeout` seconds. Ray forwards actors' log lines to the driver
    asynchronously, so a driver that exits right after its last row may never print them; the worker
    log files (moved to logs/old/ when the worker exits) always have them."""
    import re
    import time

    import ray._private.worker

    regex = re.compile(pattern)
    if regex.search(also_in):
        return True
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    deadline = time.monotonic() + timeout
    while True:
        for path in logs.rglob("worker-*"):
            if path.suffix in (".out", ".err") and regex.search(path.read_text(errors="replace")):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@contextmanager
def faults(text: str):
    """LATENTMILL_FAULTS for runs started in this process (the driver forwards it to the actors)."""
    previous = os.environ.get("LATENTMILL_FAULTS")
    os.environ["LATENTMILL_FAULTS"] = text
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LATENTMILL_FAULTS")
        else:
            os.environ["LATENTMILL_FAULTS"] = previous
