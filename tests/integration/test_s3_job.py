"""A job against a real S3 server with wrong credentials. (The whole job on S3, prompts read from s3:// and
media, manifest and error rows written there: test_multifile_inputs.py.)"""

from __future__ import annotations

import pytest

from latentmill.pipelines.job import JobError
from tests.helpers import write_table

pytestmark = pytest.mark.slow


def s3_settings(s3, secret=None) -> dict:
    return {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": secret or s3.secret_key}


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
