"""`latentmill status` and `latentmill verify` against a real S3 server (SeaweedFS, tests/s3server.py): an
output written by hand, then a deleted, a corrupted and an extra object. Credentials come from a job file's
storage section, then from the AWS_* environment variables. No Ray."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.jobs.cli import main

pytestmark = pytest.mark.slow

RUN = "20261130T120000-cccccc"


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """No AWS settings from the developer's environment or ~/.aws leak into a test."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def test_status_and_verify_on_s3(s3, no_aws_env, tmp_path, monkeypatch, capsys):
    prefix = f"s3://latentmill/inspect/{uuid.uuid4().hex[:8]}"
    dest = f"{prefix}/out"
    fs, root = storage.resolve(dest, s3.storage_options())
    input_uri = f"{prefix}/prompts.parquet"
    storage.put_bytes(fs, storage.resolve(input_uri, s3.storage_options())[1],
                      parquet([{"id": f"m{i}", "prompt": "a cat"} for i in range(8)]))
    record = {"fingerprint": "0123456789abcdef", "model": "builtin:tiny-image", "input": input_uri, "output": dest}
    storage.put_bytes(fs, storage.join(root, "_latentmill_job.json"), json.dumps(record).encode())
    rows = []
    for i in range(6):
        data = hashlib.sha256(f"m{i}".encode()).digest() * 4
        storage.put_bytes(fs, storage.join(root, "media", f"m{i}.png"), data)
        row = {name: None for name in schema.MANIFEST_COLUMNS}
        row.update({schema.ID: f"m{i}", schema.PROMPT: "a cat", schema.OUTPUT_URI: f"{dest}/media/m{i}.png",
                    schema.BYTES: len(data), schema.SHA256: hashlib.sha256(data).hexdigest()})
        rows.append(row)
    storage.put_bytes(fs, storage.join(root, "manifest", f"part-{RUN}-00000.parquet"), parquet(rows[:3]))
    time.sleep(2.1)  # S3's LastModified has whole seconds: two writes apart give a rate
    storage.put_bytes(fs, storage.join(root, "manifest", f"part-{RUN}-00001.parquet"), parquet(rows[3:]))
    storage.put_bytes(fs, storage.join(root, "errors", f"part-{RUN}-00000.parquet"), parquet([{
        schema.ID: "m7", schema.SAMPLE_INDEX: 0, schema.INPUT_ROW: "{}", schema.ERROR_STAGE: "denoise",
        schema.ERROR_TYPE: "RuntimeError", schema.ERROR_MESSAGE: "boom", "run_id": RUN}]))

    job = tmp_path / "job.yaml"  # a storage section alone: no input or output needed
    job.write_text(f"storage:\n  endpoint_url: {s3.endpoint_url}\n  key: {s3.access_key}\n"
                   f"  secret: {s3.secret_key}\n  region: {s3.region}\n")
    assert main(["status", dest, "--config", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["done"], report["failed"], report["input_rows"], report["expected"], report["pending"]) == (
        6, 1, 8, 8, 1)
    assert report["latest_run"] == RUN and report["finished"] is False
    assert report["rate"] and 3 / 4 <= report["rate"] <= 3 / 1.5 and report["eta_s"] is not None
    assert main(["verify", dest, "--config", str(job)]) == 0
    assert "OK: every object matches the manifest" in capsys.readouterr().out

    fs.rm_file(storage.join(root, "media", "m0.png"))
    corrupted = bytearray(fs.cat_file(storage.join(root, "media", "m1.png")))
    corrupted[0] ^= 0xFF
    storage.put_bytes(fs, storage.join(root, "media", "m1.png"), bytes(corrupted))  # same size
    storage.put_bytes(fs, storage.join(root, "media", "stray.png"), b"named by no row")

    assert main(["verify", dest, "--config", str(job), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in found["missing"]] == ["m0"]
    assert [(f["id"], f["detail"][:6]) for f in found["changed"]] == [("m1", "sha256")]
    assert found["extra"] == [f"{dest}/media/stray.png"] and found["intact"] == 4
    assert s3.secret_key not in json.dumps(found)

    for name, value in s3.env().items():  # the same from the standard AWS variables
        monkeypatch.setenv(name, value)
    assert main(["verify", dest]) == 1
    text = capsys.readouterr().out
    assert "m0.png" in text and "m1.png" in text and "stray.png" in text and "MISMATCH" in text
    assert main(["verify", dest, "--size-only", "--json"]) == 1  # the same-size corruption goes unseen
    cheap = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in cheap["missing"]] == ["m0"] and cheap["changed"] == [] and len(cheap["extra"]) == 1
    assert main(["status", dest]) == 0
    assert "outputs done" in capsys.readouterr().out
