"""Resume bookkeeping on a local output folder, without Ray: the job record, verified manifest rows,
stale rows dropped so a regenerated row never has two manifest rows, and the driver's row accounting.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.pipelines.job import ResultWriter, RunSummary
from latentmill.io.outputs import load_output_state
from latentmill.pipelines.resume import JOB_RECORD, OutputConflict, check_job_record


def local(tmp_path):
    return storage.resolve(str(tmp_path / "out"))


def manifest_row(root: str, row_id: str, data: bytes) -> dict:
    row = {name: None for name in schema.MANIFEST_COLUMNS}
    row.update({
        schema.ID: row_id,
        schema.PROMPT: f"prompt {row_id}",
        schema.OUTPUT_URI: storage.join(root, "media", f"{storage.safe_key(row_id)}.png"),
        schema.BYTES: len(data),
        schema.SHA256: hashlib.sha256(data).hexdigest(),
    })
    return row


def write_output(tmp_path, parts: list[list[str]], error_parts: int = 1):
    """An output folder as a finished run leaves it: media objects, then manifest parts naming them."""
    fs, root = local(tmp_path)
    for n, ids in enumerate(parts):
        rows = []
        for row_id in ids:
            data = f"image bytes of {row_id}".encode()
            storage.put_bytes(fs, storage.join(root, "media", f"{storage.safe_key(row_id)}.png"), data)
            rows.append(manifest_row(root, row_id, data))
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        storage.put_bytes(fs, storage.join(root, "manifest", f"part-r1-{n:05d}.parquet"), buffer.getvalue().to_pybytes())
    for n in range(error_parts):
        table = pa.table({schema.ID: ["bad"], schema.ERROR_STAGE: ["validate"]})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        storage.put_bytes(fs, storage.join(root, "errors", f"part-r1-{n:05d}.parquet"), buffer.getvalue().to_pybytes())
    return fs, root


def manifest_ids(tmp_path) -> list[str]:
    return sorted(pq.read_table(tmp_path / "out" / "manifest").column(schema.ID).to_pylist())


def test_first_run_records_the_job_and_a_rerun_is_a_resume(tmp_path):
    fs, root = local(tmp_path)
    description = {"output": str(tmp_path / "out"), "model": "m", "input": "in.parquet"}
    assert check_job_record(fs, root, "abc123", description) is False
    record = json.loads((tmp_path / "out" / JOB_RECORD).read_text())
    assert record == {"fingerprint": "abc123", **description}
    assert check_job_record(fs, root, "abc123", description) is True


def test_a_different_job_is_refused_with_what_to_do(tmp_path):
    fs, root = local(tmp_path)
    description = {"output": "s3://b/out", "model": "m", "input": "in.parquet"}
    check_job_record(fs, root, "abc123", description)
    with pytest.raises(OutputConflict) as caught:
        check_job_record(fs, root, "def456", description)
    message = str(caught.value)
    assert "s3://b/out holds results of a different job (fingerprint abc123, this job is def456" in message
    assert "Write to a new output, or delete that folder to start over" in message
    assert "re-running the original command resumes it" in message
    assert json.loads((tmp_path / "out" / JOB_RECORD).read_text())["fingerprint"] == "abc123"  # untouched


def test_empty_output_has_nothing_done(tmp_path):
    fs, root = local(tmp_path)
    state = load_output_state(fs, root)
    assert (state.done, state.stale, state.manifest_parts, state.error_parts) == ({}, 0, [], [])


def test_intact_objects_are_done(tmp_path):
    fs, root = write_output(tmp_path, [["a", "b/../c"], ["d"]])
    state = load_output_state(fs, root)
    assert set(state.done) == {"a", "b/../c", "d"} and state.stale == 0
    assert len(state.manifest_parts) == 2 and len(state.error_parts) == 1
    assert state.done["a"] == hashlib.sha256(b"image bytes of a").hexdigest()


@pytest.mark.parametrize("verify", ["sha256", "size"])
def test_deleted_or_truncated_objects_are_generated_again_and_leave_the_manifest(tmp_path, verify):
    fs, root = write_output(tmp_path, [["a", "b"], ["c", "d"]])
    (tmp_path / "out" / "media" / "b.png").unlink()
    (tmp_path / "out" / "media" / "c.png").write_bytes(b"trunc")
    state = load_output_state(fs, root, verify)
    assert set(state.done) == {"a", "d"} and state.stale == 2
    # The parts were rewritten without the stale rows: a regenerated row will have one manifest row.
    assert manifest_ids(tmp_path) == ["a", "d"]
    assert len(list((tmp_path / "out" / "manifest").iterdir())) == 2


def test_same_size_corruption_is_caught_by_sha256_only(tmp_path):
    fs, root = write_output(tmp_path, [["a", "b"]])
    original = (tmp_path / "out" / "media" / "a.png").read_bytes()
    (tmp_path / "out" / "media" / "a.png").write_bytes(bytes(reversed(original)))
    assert set(load_output_state(fs, root, "size").done) == {"a", "b"}  # the documented trade-off
    state = load_output_state(fs, root, "sha256")
    assert set(state.done) == {"b"} and manifest_ids(tmp_path) == ["b"]


def test_a_temporary_file_of_an_interrupted_write_is_not_a_part(tmp_path):
    fs, root = write_output(tmp_path, [["a"]])
    (tmp_path / "out" / "manifest" / ".part-r2-00000.parquet.x1y2.tmp").write_bytes(b"half a parquet")
    state = load_output_state(fs, root)
    assert set(state.done) == {"a"} and len(state.manifest_parts) == 1


def result_batch(rows: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """(id, error_stage) pairs as the last stage hands them to the driver."""
    size = len(rows)
    batch = {name: np.full(size, "", dtype=object) for name in (*schema.MANIFEST_COLUMNS, *schema.ERROR_COLUMNS)}
    batch[schema.ID] = np.array([r[0] for r in rows], dtype=object)
    batch[schema.ERROR_STAGE] = np.array([r[1] for r in rows], dtype=object)
    batch[schema.SAMPLE_INDEX] = np.zeros(size, dtype=np.int64)
    batch[schema.BYTES] = np.ones(size, dtype=np.int64)
    return batch


def test_result_writer_accounts_for_every_row_and_writes_parts(tmp_path):
    out = str(tmp_path / "out")
    writer = ResultWriter(out, {}, "r9", rows_per_part=2, flush_seconds=3600, static={"model": "m"})
    summary = RunSummary(run_id="r9", output_uri=out)
    writer.add(result_batch([("a", ""), ("b", "denoise"), ("c", schema.ALREADY_DONE)]), summary)
    assert not (tmp_path / "out" / "manifest").exists()  # below rows_per_part and flush_seconds
    writer.add(result_batch([("d", ""), ("e", "")]), summary)
    assert (tmp_path / "out" / "manifest" / "part-r9-00000.parquet").exists()
    assert not (tmp_path / "out" / "errors").exists()
    writer.close()
    assert (summary.rows_read, summary.outputs_written, summary.already_done, summary.rows_failed) == (5, 3, 1, 1)
    assert summary.failed_by_stage == {"denoise": 1} and summary.balanced
    manifest = pq.read_table(tmp_path / "out" / "manifest")
    assert sorted(manifest.column(schema.ID).to_pylist()) == ["a", "d", "e"]
    assert set(manifest.column("model").to_pylist()) == {"m"}
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert [(e[schema.ID], e[schema.ERROR_STAGE], e["run_id"]) for e in errors] == [("b", "denoise", "r9")]
    parts = sorted(p.name for p in (tmp_path / "out" / "manifest").iterdir())
    assert parts == ["part-r9-00000.parquet"]


def test_summary_balance():
    summary = RunSummary(run_id="r", output_uri="o", rows_read=5, requests=5, outputs_written=2, already_done=2,
                         rows_failed=1)
    assert summary.balanced
    summary.outputs_written = 3
    assert not summary.balanced
