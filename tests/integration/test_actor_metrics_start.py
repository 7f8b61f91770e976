"""A stage actor's counters on a real Ray node's Prometheus endpoint: at 0 from its start, then rising.

A one-node Ray cluster (``ray start``, metrics report interval 1 s) and a driver process that starts one
actor holding a StageMetrics, as a stage actor does after loading its model. Before its first batch the
node's endpoint must serve ``ray_latentmill_stage_rows_total`` at 0 for every outcome and
``ray_latentmill_stage_bytes_written_total`` at 0; after a batch the same series hold the batch's counts.
Before, the series appeared only with the first batch, at its value, so rate() over a short run was 0.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

try:
    from tests.raycluster import LocalRayCluster
except ImportError:  # pytest run without the repository root on sys.path
    from raycluster import LocalRayCluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = "latentmill-actor-start-test"
ROWS, BYTES = "ray_latentmill_stage_rows_total", "ray_latentmill_stage_bytes_written_total"

DRIVER = f"""
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0)
class Stage:
    def __init__(self):
        from latentmill.metrics import StageMetrics
        self.metrics = StageMetrics("encode", "m", {JOB!r})

    def batch(self, ok, failed, written):
        self.metrics.observe_batch(0.1, ok, failed, written)

actor = Stage.remote()
ray.get(actor.__ray_ready__.remote())
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "batch":
        ray.get(actor.batch.remote(3, 1, 42))
        print("done", flush=True)
"""


def series(url: str) -> dict[tuple[str, str], float]:
    """(sample name, outcome) -> value of this test job's actor counters on a node's endpoint."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(sample.name, sample.labels.get("outcome", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name in (ROWS, BYTES) and sample.labels.get("job") == JOB}


def wait_for(url: str, expected: dict, timeout: float = 60) -> dict:
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        found = series(url)
        if found == expected:
            return found
        time.sleep(0.5)
    return found


def read_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"the driver ended or hung: {proc.poll()}")


def test_actor_counters_exist_at_zero_before_the_first_batch_then_rise(tmp_path):
    env = {"RAY_metrics_report_interval_ms": "1000", "PYTHONPATH": str(ROOT)}
    with LocalRayCluster(tmp_path / "ray", env=env) as cluster:
        (node,) = [cluster.start_head(num_cpus=1)]
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address], env=cluster.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        try:
            assert read_line(proc) == "ready"
            zero = {(ROWS, "ok"): 0, (ROWS, "failed"): 0, (BYTES, ""): 0}
            assert wait_for(node.metrics_url, zero) == zero, "the counters did not appear at 0 before a batch"
            proc.stdin.write("batch\n")
            proc.stdin.flush()
            assert read_line(proc) == "done"
            counted = {(ROWS, "ok"): 3, (ROWS, "failed"): 1, (BYTES, ""): 42}
            assert wait_for(node.metrics_url, counted) == counted
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
