"""The whole job against a real S3 server: prompts read from s3://, media and manifest written there."""

from __future__ import annotations

import hashlib

import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.pipelines.job import JobError
from tests.helpers import generate, read_parquet_folder, write_table

pytestmark = pytest.mark.slow


def s3_settings(s3, secret=None) -> dict:
    return {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": secret or s3.secret_key}


def test_prompts_from_s3_outputs_to_s3_every_object_matches_manifest(ray_local, s3, tmp_path):
    rows = [{"prompt": f"prompt number {i}", "id": f"row/{i} ../x"} for i in range(5)] + [{"prompt": None, "id": "bad"}]
    local = write_table(tmp_path / "prompts.parquet", rows)
    fs, _ = storage.resolve("s3://latentmill/", s3.storage_options())
    fs.put_file(str(local), "latentmill/inputs/prompts.parquet")

    summary, _ = generate("s3://latentmill/inputs/prompts.parquet", "s3://latentmill/runs/s3-job",
                          storage=s3_settings(s3))
    assert (summary.rows_read, summary.outputs_written, summary.rows_failed) == (6, 5, 1)

    manifest = read_parquet_folder(fs, "latentmill/runs/s3-job/manifest").to_pylist()
    assert sorted(row[schema.ID] for row in manifest) == sorted(r["id"] for r in rows[:5])
    for row in manifest:
        assert row[schema.OUTPUT_URI].startswith("s3://latentmill/runs/s3-job/media/")
        data = fs.cat_file(row[schema.OUTPUT_URI])
        assert hashlib.sha256(data).hexdigest() == row[schema.SHA256] and len(data) == row[schema.BYTES]
    media_keys = fs.ls("latentmill/runs/s3-job/media")
    assert len(media_keys) == 5 and all("/media/" in key for key in media_keys)

    errors = read_parquet_folder(fs, "latentmill/runs/s3-job/errors").to_pylist()
    assert [(e[schema.ID], e[schema.ERROR_STAGE]) for e in errors] == [("bad", "validate")]
    summary_json = fs.cat_file("latentmill/runs/s3-job/summary.json").decode()
    assert s3.secret_key not in summary_json and '"outputs_written": 5' in summary_json


def test_wrong_credentials_fail_before_any_model_loads(s3, tmp_path):
    from latentmill.config import load_config
    from latentmill.pipelines.job import run_job

    table = write_table(tmp_path / "prompts.parquet", [{"prompt": "p"}])
    config = load_config(None, {
        "input": {"uri": str(table)},
        "output": {"uri": "s3://latentmill/runs/denied"},
        # A model that does not exist: if it were looked at first, the error would be about it.
        "model": {"path": str(tmp_path / "no-such-model")},
        "storage": s3_settings(s3, secret="not-the-secret"),
    })
    with pytest.raises(JobError) as caught:
        run_job(config)
    message = str(caught.value)
    assert "s3://latentmill/runs/denied" in message or "latentmill/runs/denied" in message
    assert "AWS_SECRET_ACCESS_KEY" in message or "credentials" in message.lower()
    assert "no-such-model" not in message and "not-the-secret" not in message
