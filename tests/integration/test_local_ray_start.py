"""`latentmill run` without an address starts a Ray of its own, even when a Ray cluster is running on
the machine and Ray's address file (`<RAY_TMPDIR>/ray/ray_current_cluster`) names it: a plain
`ray.init(num_cpus=...)` would try to join that cluster and fail ("When connecting to an existing
cluster, num_cpus and num_gpus must not be provided").

The address file lives in a temp dir of the test's own (RAY_TMPDIR), never in /tmp/ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from latentmill.jobs.cli import EXIT_OK
from tests.helpers import write_table
from tests.integration.exactly_once import check_output, cli_command

pytestmark = pytest.mark.slow

JOB = """
defaults: {num_inference_steps: 2}
stages:
  encode: {batch_size: 2, num_cpus: 0.5, torch_threads: 1}
  denoise: {batch_size: 2, num_cpus: 0.5, torch_threads: 1}
  decode: {batch_size: 2, num_cpus: 0.5, torch_threads: 1}
"""


def test_a_local_run_starts_its_own_ray_next_to_a_running_cluster(ray_local, tmp_path):
    import ray

    table = write_table(tmp_path / "prompts.parquet", [{"id": "a", "prompt": "a lighthouse"},
                                                       {"id": "b", "prompt": "a bowl of ramen"}])
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    ray_tmp = Path(tempfile.mkdtemp(prefix="lmt-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        (ray_tmp / "ray").mkdir()
        # The test session's Ray is the cluster running on this machine.
        (ray_tmp / "ray" / "ray_current_cluster").write_text(ray.get_runtime_context().gcs_address)
        env = dict(os.environ, RAY_TMPDIR=str(ray_tmp))
        env.pop("RAY_ADDRESS", None)
        result = subprocess.run(cli_command(job, "--input", str(table), "--output", str(tmp_path / "out")),
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == EXIT_OK, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "Started a local Ray instance" in result.stderr
        check_output(str(tmp_path / "out"), {"a", "b"}, set())
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
