"""`latentmill status` and `latentmill verify` on output folders written by hand (pyarrow, no Ray)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.jobs.cli import main
from latentmill.jobs.inspection import InspectError, job_file_sections, status, verify

RUN_A = "20261130T100000-aaaaaa"  # an earlier, finished run
RUN_B = "20261130T110000-bbbbbb"  # the latest run
T0 = 1_790_000_000.0  # modification time of the latest run's first part


def write_prompts(path, rows: int) -> str:
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(rows)], "prompt": ["a cat"] * rows}), path)
    return str(path)


class Output:
    """An output folder as latentmill leaves it, written file by file."""

    def __init__(self, root, input_uri: str | None = None) -> None:
        self.root = str(root)
        self.objects: dict[str, bytes] = {}
        os.makedirs(self.root, exist_ok=True)
        record = {"fingerprint": "0123456789abcdef", "model": "builtin:tiny-image", "input": input_uri,
                  "output": self.root}
        self.write("_latentmill_job.json", json.dumps(record).encode())

    def write(self, relative: str, data: bytes, mtime: float | None = None) -> str:
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def media(self, row_id: str, data: bytes | None = None) -> dict:
        data = data if data is not None else hashlib.sha256(row_id.encode()).digest() * 8
        self.write(f"media/{row_id}.png", data)
        row = {name: None for name in schema.MANIFEST_COLUMNS}
        row.update({schema.ID: row_id, schema.PROMPT: f"prompt {row_id}", schema.SAMPLE_INDEX: 0,
                    schema.OUTPUT_URI: storage.join(self.root, "media", f"{row_id}.png"),
                    schema.BYTES: len(data), schema.SHA256: hashlib.sha256(data).hexdigest(),
                    schema.MIME_TYPE: "image/png"})
        return row

    def manifest_part(self, run: str, n: int, rows: list[dict], mtime: float | None = None) -> None:
        self.part("manifest", run, n, rows, mtime)

    def error_part(self, run: str, n: int, ids: list[str], stage: str = "decode", mtime: float | None = None) -> None:
        rows = [{schema.ID: row_id, schema.SAMPLE_INDEX: 0, schema.INPUT_ROW: "{}", schema.ERROR_STAGE: stage,
                 schema.ERROR_TYPE: "RuntimeError", schema.ERROR_MESSAGE: "boom", "run_id": run} for row_id in ids]
        self.part("errors", run, n, rows, mtime)

    def part(self, kind: str, run: str, n: int, rows: list[dict], mtime: float | None) -> None:
        path = self.write(f"{kind}/part-{run}-{n:05d}.parquet", b"", mtime)
        pq.write_table(pa.Table.from_pylist(rows), path)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def summary(self, run: str, **counts) -> None:
        payload = {"run_id": run, "output_uri": self.root, "config": {"input": {"samples_per_prompt": 1,
                                                                                  "limit": None}}, **counts}
        self.write("summary.json", json.dumps(payload).encode())
        self.write(f"runs/{run}.json", json.dumps(payload).encode())


@pytest.fixture
def resumed(tmp_path):
    """Run A finished (20 outputs, 3 failed); run B, resuming it, has written 3 manifest parts and 1 error."""
    out = Output(tmp_path / "out", write_prompts(tmp_path / "prompts.parquet", 100))
    out.manifest_part(RUN_A, 0, [out.media(f"a{i}") for i in range(20)], mtime=T0 - 3600)
    out.error_part(RUN_A, 0, ["x1", "x2", "x3"], mtime=T0 - 3600)
    out.summary(RUN_A, requests=100, outputs_written=20, already_done=0, rows_failed=3, wall_seconds=60.0)
    for n in range(3):
        out.manifest_part(RUN_B, n, [out.media(f"b{n}-{i}") for i in range(10)], mtime=T0 + 10 * n)
    out.error_part(RUN_B, 0, ["x1"], stage="encode", mtime=T0 + 20.2)  # flushed with the last manifest part
    return out


def test_status_of_a_resumed_run_in_progress(resumed):
    report = status(resumed.root, now=T0 + 25)
    assert report.done == 50 and report.manifest_parts == 4
    assert report.input_rows == 100 and report.expected == 100
    # Run A's error rows are being retried by run B: only B's count as failed.
    assert report.failed == 1 and report.failed_by_stage == {"encode": 1} and report.failed_earlier == 3
    assert report.pending == 100 - 50 - 1
    assert report.latest_run == RUN_B and not report.finished
    # 20 outputs written in the 20.2 s after the first of B's parts (run A's parts are not B's rate).
    assert report.rate == pytest.approx(20 / 20.2)
    assert report.rows_rate == pytest.approx(21 / 20.2)
    assert report.eta_s == pytest.approx(T0 + 20.2 + 49 / (21 / 20.2) - (T0 + 25))
    assert report.last_write_age_s == pytest.approx(25 - 20.2)
    table = report.table()
    assert "50 of 100 (50.0%)" in table and "in progress, or stopped" in table and "ETA" in table


def test_status_when_the_latest_run_finished(resumed):
    resumed.summary(RUN_B, requests=51, outputs_written=30, already_done=20, rows_failed=1, wall_seconds=33.0)
    os.remove(os.path.join(resumed.root, "errors", f"part-{RUN_A}-00000.parquet"))  # as a resumed run's end does
    report = status(resumed.root, now=T0 + 25)
    assert report.finished and report.expected == 51 and report.failed == 1 and report.failed_earlier == 0
    assert report.eta_s is None and report.pending == 0
    assert "finished: 30 written, 20 already done, 1 failed in 33 s" in report.table()


def test_status_command_prints_a_table_and_json(resumed, capsys):
    assert main(["status", resumed.root]) == 0
    assert "outputs done" in capsys.readouterr().out
    assert main(["status", resumed.root, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["done"] == 50 and payload["latest_run"] == RUN_B and payload["finished"] is False


def test_status_first_run_takes_samples_from_the_job_file(tmp_path, capsys):
    out = Output(tmp_path / "out", write_prompts(tmp_path / "prompts.parquet", 30))
    out.manifest_part(RUN_B, 0, [out.media(f"b{i}") for i in range(5)], mtime=T0)
    report = status(out.root, now=T0 + 1)
    assert report.expected == 30 and "assumed" in report.input_note
    assert report.rate is None and "two manifest writes" in report.rate_note
    job = tmp_path / "job.yaml"
    job.write_text(f"input:\n  samples_per_prompt: 2\n  limit: 20\noutput:\n  uri: {out.root}\n")
    assert main(["status", "--config", str(job), "--json"]) == 0  # DEST from the job file's output.uri
    payload = json.loads(capsys.readouterr().out)
    assert payload["expected"] == 40 and payload["pending"] == 35


def test_status_says_when_the_input_is_unreadable(tmp_path, capsys):
    out = Output(tmp_path / "out", str(tmp_path / "gone.parquet"))
    out.manifest_part(RUN_B, 0, [out.media("b0")])
    report = status(out.root)
    assert report.input_rows is None and report.expected is None and "is not there" in report.input_note
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    out = Output(tmp_path / "out2", str(bad))
    report = status(out.root)
    assert report.input_rows is None and "not a readable Parquet" in report.input_note
    assert main(["status", out.root]) == 0
    assert "unknown: cannot read the input's footers" in capsys.readouterr().out


def test_status_and_verify_refuse_a_folder_that_is_no_output(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 1
    assert "holds no latentmill output" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing")]) == 1
    with pytest.raises(InspectError, match="name the job's output"):
        from latentmill.jobs.inspection import _destination

        _destination(type("Args", (), {"dest": None, "config": None})())


def test_verify_all_well(resumed, capsys):
    assert main(["verify", resumed.root]) == 0
    out = capsys.readouterr().out
    assert "OK: every object matches the manifest" in out and "intact           50" in out


def test_verify_finds_missing_changed_and_extra_objects(resumed, capsys):
    media = os.path.join(resumed.root, "media")
    os.remove(os.path.join(media, "a0.png"))
    same_size = open(os.path.join(media, "a1.png"), "rb").read()
    resumed.write("media/a1.png", bytes(reversed(same_size)))  # corrupted, same size
    resumed.write("media/a2.png", b"short")  # corrupted, other size
    resumed.write("media/stray.png", b"nobody's")
    resumed.write("media/.b0-0.png.x1y2.tmp", b"half written")  # latentmill's own temporary file: ignored
    report = verify(resumed.root)
    assert not report.ok
    assert [f.id for f in report.missing] == ["a0"]
    assert sorted(f.id for f in report.changed) == ["a1", "a2"]
    assert report.extra == [os.path.join(media, "stray.png")]
    assert report.intact == 47 and report.checked == {"media": 50}

    # --size-only: one listing, no reads; a same-size corruption goes unseen.
    cheap = verify(resumed.root, size_only=True)
    assert [f.id for f in cheap.missing] == ["a0"] and [f.id for f in cheap.changed] == ["a2"]

    assert main(["verify", resumed.root]) == 1
    text = capsys.readouterr().out
    assert "missing" in text and "a0.png" in text and "stray.png" in text and "re-run the job's command" in text
    assert "x1y2" not in text and "MISMATCH" in text
    assert main(["verify", resumed.root, "--json", "--threads", "3"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and len(payload["changed"]) == 2 and len(payload["extra"]) == 1


def test_verify_checks_saved_latents_and_transition_videos(tmp_path):
    out = Output(tmp_path / "out")
    rows = []
    for row_id in ("r0", "r1"):
        row = out.media(row_id)
        latents = f"latents of {row_id}".encode()
        out.write(f"latents/{row_id}.safetensors", latents)
        row[schema.LATENTS_URI] = storage.join(out.root, "latents", f"{row_id}.safetensors")
        row[schema.LATENTS_SHA256] = hashlib.sha256(latents).hexdigest()
        rows.append(row)
    out.manifest_part(RUN_B, 0, rows)
    video = b"an mp4"
    out.write("videos/t1.mp4", video)
    out.write(f"transitions/part-{RUN_B}.parquet", b"")
    pq.write_table(pa.Table.from_pylist([{"id": "t1", "output_uri": storage.join(out.root, "videos", "t1.mp4"),
                                          "bytes": len(video), "sha256": hashlib.sha256(video).hexdigest()}]),
                   os.path.join(out.root, "transitions", f"part-{RUN_B}.parquet"))
    report = verify(out.root)
    assert report.ok and report.checked == {"media": 2, "latents": 2, "video": 1} and report.intact == 5
    progress = status(out.root)
    assert progress.kind == "interpolate" and progress.transitions_done == 1 and progress.done == 2
    assert "frames done" in progress.table() and progress.expected is None

    first = Output(tmp_path / "frames")  # an interpolation job's first run, before transitions/ and summary
    first.manifest_part(RUN_B, 0, [{**first.media("t1-f0"), "transition_id": "t1", "step": 0, "t": 0.0}])
    assert status(first.root).kind == "interpolate"

    out.write("latents/r1.safetensors", b"latents of rX")  # same size, other content
    os.remove(os.path.join(out.root, "videos", "t1.mp4"))
    report = verify(out.root)
    assert [(f.kind, f.id) for f in report.changed] == [("latents", "r1")]
    assert [(f.kind, f.id) for f in report.missing] == [("video", "t1")]
    size_only = verify(out.root, size_only=True)  # latents have no recorded size: existence only
    assert not size_only.changed and len(size_only.missing) == 1


def test_verify_reports_duplicate_rows_and_a_moved_folder(tmp_path):
    out = Output(tmp_path / "out")
    row = out.media("d0")
    out.manifest_part(RUN_A, 0, [row])
    out.manifest_part(RUN_B, 0, [row])
    report = verify(out.root)
    assert report.missing == [] and report.changed == [] and len(report.duplicates) == 1
    assert "2 manifest rows for id 'd0'" in report.duplicates[0] and not report.ok

    moved = tmp_path / "moved"
    os.rename(out.root, moved)
    report = verify(str(moved))
    assert len(report.missing) == 2 and report.extra == [str(moved / "media" / "d0.png")]
    assert any("outside" in note and "absolute" in note for note in report.notes)


def test_job_file_sections_need_only_storage(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("storage:\n  endpoint_url: http://127.0.0.1:9\n  key: k\n  secret: s3cr3t\n")
    options, output, section = job_file_sections(job)
    assert options == {"key": "k", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert output is None and section == {}
    job.write_text("storage:\n  endpoint_url: 127.0.0.1:9\n")
    with pytest.raises(InspectError, match="storage.endpoint_url"):
        job_file_sections(job)
    with pytest.raises(InspectError, match="cannot read job file"):
        job_file_sections(tmp_path / "missing.yaml")


def test_status_and_verify_load_neither_ray_nor_torch(resumed):
    import subprocess
    import sys

    code = ("import sys; from latentmill.jobs import cli\n"
            f"codes = [cli.main(['status', {resumed.root!r}]), cli.main(['verify', {resumed.root!r}])]\n"
            "heavy = [m for m in ('ray', 'torch', 'diffusers') if m in sys.modules]\n"
            "print('HEAVY', heavy, codes)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert "HEAVY [] [0, 0]" in result.stdout, result.stdout + result.stderr
