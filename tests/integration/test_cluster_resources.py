"""Pools that cannot start on the cluster stop the job with a message instead of waiting forever.

A real `ray start --head --num-cpus=2 --num-gpus=1` cluster (token auth on, as tests/raycluster.py
starts it). The default pools (1.75 CPUs) and a read task (1 CPU) do not fit 2 CPUs: the job stops
before any actor starts. Pools that do fit the cluster but whose GPU another job holds stay pending:
the job stops after `ray.pending_timeout_s`, naming the pool and what it asks for.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentmill.jobs.cli import EXIT_JOB_ERROR
from tests.helpers import write_table
from tests.raycluster import LocalRayCluster

pytestmark = pytest.mark.slow

HOG = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0, num_gpus=1)
class Hog:
    def ready(self):
        return True

hog = Hog.options(name="gpu-hog", lifetime="detached").remote()
ray.get(hog.ready.remote(), timeout=120)
"""

PENDING_JOB = """
defaults: {num_inference_steps: 2}
stages:
  encode: {batch_size: 2, num_cpus: 0.25, torch_threads: 1}
  denoise: {batch_size: 2, num_cpus: 0.25, num_gpus: 1, torch_threads: 1}
  decode: {batch_size: 2, num_cpus: 0.25, torch_threads: 1}
ray: {pending_timeout_s: 5, progress_bars: false}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    work = tmp_path_factory.mktemp("small-cluster")
    env = {"LATENTMILL_CACHE": str(model_cache), "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    with LocalRayCluster(work, env=env) as ray_cluster:
        ray_cluster.start_head(num_cpus=2, num_gpus=1)
        ray_cluster.wait_for_nodes(1)
        yield ray_cluster


@pytest.fixture
def table(tmp_path) -> Path:
    return write_table(tmp_path / "prompts.parquet", [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(3)])


def latentmill(cluster: LocalRayCluster, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "latentmill.jobs.cli", "run", "--no-progress",
                             "--ray-address", cluster.address, *args],
                            env=cluster.env(), capture_output=True, text=True, timeout=600)
    return result, time.monotonic() - started


def test_default_pools_on_a_two_cpu_cluster_stop_before_any_actor_starts(cluster, table, tmp_path):
    result, seconds = latentmill(cluster, "--input", str(table), "--output", str(tmp_path / "out"))
    assert result.returncode == EXIT_JOB_ERROR, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "the actor pools do not fit this Ray cluster (CPU 2, GPU 1 on 1 node" in result.stderr
    assert "need [CPU 2.75]" in result.stderr
    assert "encode 1 x [CPU 0.25], denoise 1 x [CPU 1], decode 1 x [CPU 0.5]" in result.stderr
    assert "Nothing was started" in result.stderr
    assert not (tmp_path / "out" / "media").exists()
    assert seconds < 180


def test_a_pool_whose_gpu_another_job_holds_stops_after_the_pending_timeout(cluster, table, tmp_path):
    hog = subprocess.run([sys.executable, "-c", HOG, cluster.address], env=cluster.env(), capture_output=True,
                         text=True, timeout=300)
    assert hog.returncode == 0, hog.stderr[-3000:]
    job = tmp_path / "job.yaml"
    job.write_text(PENDING_JOB)
    result, seconds = latentmill(cluster, "--config", str(job), "--input", str(table),
                                 "--output", str(tmp_path / "out"))
    assert result.returncode == EXIT_JOB_ERROR, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "internal code" not in result.stderr
    assert "the actor pools are waiting for resources the Ray cluster does not give them" in result.stderr
    assert "the denoise pool has had no actor running for" in result.stderr
    assert "Ray cannot place an actor that asks for [CPU 0.25, GPU 1]" in result.stderr
    assert "raise ray.pending_timeout_s (now 5 s)" in result.stderr
    assert "0 output(s) were saved; re-run the same command to resume" in result.stderr
    assert seconds < 240
