"""The cluster path: a local two-node Ray cluster, the nightly job submitted with `ray job submit`.

The head advertises what ray_cluster.yaml's gpu_small type does (a logical GPU and `small_gpu`), the second
node what gpu_large does (a logical GPU and `large_gpu`); the job file is infra/job-cluster.yaml scaled
down to this machine (same GPU and custom-resource requests, smaller CPU requests and pools). There is no
real GPU, so the actors fall back to the CPU. Checked: the job ends SUCCEEDED, its outputs, that every
denoise actor ran on the large_gpu node and every encode/decode actor on the small_gpu one (Ray's state
API), that each node's Prometheus endpoint served the stage metrics of the pools it hosted (scraped
during the run, parsed with prometheus_client), and that the nightly job pushed its counts. On the same
cluster: a stage actor's counters are on its node's endpoint at 0 before its first batch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

try:
    from tests.helpers import decode_media, write_table
    from tests.pushgateway import Pushgateway, find_pushgateway
    from tests.raycluster import LocalRayCluster
except ImportError:  # pytest run without the repository root on sys.path
    from helpers import decode_media, write_table
    from pushgateway import Pushgateway, find_pushgateway
    from raycluster import LocalRayCluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-21"
GOOD = ["a lighthouse at dusk", "two cats on a sofa", "a bowl of ramen"]
JOB_TIMEOUT = 420
STAGE_CLASSES = {"encode": "TextEncodeWorker", "denoise": "DenoiseWorker", "decode": "DecodeWorker"}


def scaled_job_file(path: Path) -> Path:
    """infra/job-cluster.yaml for this 2-core machine: same GPU/custom resources, tiny CPU requests."""
    job = yaml.safe_load((ROOT / "infra" / "job-cluster.yaml").read_text())
    job["model"] = {"path": "builtin:tiny-image"}
    for pool in job["stages"].values():
        pool.update(size=1, batch_size=2, num_cpus=0.25, torch_threads=1, dtype="float32")
    job.pop("metrics")  # no driver port (jobs on one head would share it); the entry's own job name
    job["output"] = {"image_format": "png"}
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    import importlib.util

    missing = [name for name in ("aiohttp_cors", "grpc", "opencensus") if importlib.util.find_spec(name) is None]
    if missing:  # without them Ray starts no dashboard (job submission) and no metrics agent
        pytest.fail(f"ray[default] is not installed (missing {missing}): pip install 'ray[default,data]'")
    work = tmp_path_factory.mktemp("cluster")
    env = {
        "LATENTMILL_CACHE": str(model_cache),
        "HF_HUB_OFFLINE": "1",
        "RAY_metrics_report_interval_ms": "1000",  # actors' metrics reach the node endpoint within ~1 s
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(ROOT),  # this checkout's latentmill in actors started outside a job's working dir
    }
    with LocalRayCluster(work, env=env) as ray_cluster:
        ray_cluster.start_head(num_cpus=2, num_gpus=1, resources={"small_gpu": 1})
        ray_cluster.add_node(num_cpus=2, num_gpus=1, resources={"large_gpu": 1})
        ray_cluster.wait_for_nodes(2)
        yield ray_cluster


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    if find_pushgateway() is None:
        pytest.skip("prometheus-pushgateway is not installed (infra/install-test-services.sh installs it)")
    with Pushgateway(tmp_path_factory.mktemp("pushgateway")) as gateway:
        yield gateway


def node_ids(cluster: LocalRayCluster) -> dict[str, str]:
    nodes = cluster.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
    by_resource = {}
    for node in nodes:
        for resource in ("small_gpu", "large_gpu"):
            if resource in node["resources_total"]:
                by_resource[resource] = node["node_id"]
    return by_resource


def stage_actors(cluster: LocalRayCluster) -> dict[str, dict[str, dict]]:
    """stage -> actor id -> actor (alive or dead) from Ray's state API."""
    reply = cluster.api("/api/v0/actors?limit=10000&detail=true") or {}
    actors = reply.get("data", {}).get("result", {}).get("result", [])
    found: dict[str, dict[str, dict]] = {stage: {} for stage in STAGE_CLASSES}
    for actor in actors:
        names = " ".join(str(actor.get(key) or "") for key in ("class_name", "repr_name", "name"))
        for stage, class_name in STAGE_CLASSES.items():
            if class_name in names:
                found[stage][actor["actor_id"]] = actor
    return found


def stage_series(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, stage, job) -> value summed over workers, from a Ray node's /metrics."""
    totals: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_latentmill_") and "stage" in sample.labels:
                key = (sample.name, sample.labels["stage"], sample.labels.get("job", ""))
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def run_job(cluster: LocalRayCluster, name: str, entrypoint: list[str]) -> dict:
    """Submit, then poll until the job ends, scraping both nodes and listing actors while it runs."""
    import urllib.request

    submission = f"{name}-{int(time.time())}"
    submit = cluster.ray("job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
                         "--submission-id", submission, "--no-wait", "--", *entrypoint, timeout=120, check=False)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    seen_series = {node.name: {} for node in cluster.nodes}
    actors: dict[str, dict[str, dict]] = {stage: {} for stage in STAGE_CLASSES}
    deadline = time.monotonic() + JOB_TIMEOUT
    status = "PENDING"
    while time.monotonic() < deadline:
        info = cluster.api(f"/api/jobs/{submission}") or {}
        status = info.get("status", status)
        for node in cluster.nodes:
            try:
                with urllib.request.urlopen(node.metrics_url, timeout=5) as response:
                    series = stage_series(response.read().decode())
            except OSError:
                continue
            for key, value in series.items():  # keep the highest value seen (actors die at the end)
                seen_series[node.name][key] = max(value, seen_series[node.name].get(key, 0.0))
        for stage, found in stage_actors(cluster).items():
            actors[stage].update(found)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    for stage, found in stage_actors(cluster).items():  # dead actors stay listed
        actors[stage].update(found)
    logs = (cluster.api(f"/api/jobs/{submission}/logs") or {}).get("logs", "")
    return {"status": status, "logs": logs, "series": seen_series, "actors": actors}


def read_folder(path: Path) -> pa.Table:
    files = sorted(path.glob("*.parquet"))
    assert files, f"no Parquet parts in {path}"
    return pa.concat_tables([pq.read_table(file) for file in files])


def check_placement(cluster: LocalRayCluster, result: dict) -> None:
    nodes = node_ids(cluster)
    for stage, actors in result["actors"].items():
        assert actors, f"no {stage} actor in Ray's state API"
        where = {actor["node_id"] for actor in actors.values()}
        expected = nodes["large_gpu"] if stage == "denoise" else nodes["small_gpu"]
        assert where == {expected}, f"{stage} actors ran on {where}, not on the node with its resources"


@pytest.fixture(scope="module")
def nightly_run(cluster, pushgateway, tmp_path_factory):
    data = tmp_path_factory.mktemp("nightly")
    partition = data / "prompts" / f"date={DAY}"
    partition.mkdir(parents=True)
    rows = [{"id": f"n{i}", "prompt": prompt} for i, prompt in enumerate(GOOD)] + [{"id": "bad", "prompt": ""}]
    write_table(partition / "part-0.parquet", rows)
    job_file = scaled_job_file(data / "job.yaml")
    result = run_job(cluster, "nightly", [
        "python", "-m", "latentmill.jobs.nightly", "--input-root", str(data / "prompts"),
        "--output-root", str(data / "renders"), "--date", DAY, "--config", str(job_file),
        "--max-failed", "1", "--pushgateway", pushgateway.url, "--no-progress",
    ])
    result["output"] = data / "renders" / DAY
    return result


def test_nightly_job_succeeds_on_the_two_node_cluster(nightly_run):
    assert nightly_run["status"] == "SUCCEEDED", nightly_run["logs"][-4000:]
    assert f"nightly render of {DAY}" in nightly_run["logs"]
    out = nightly_run["output"]
    manifest = read_folder(out / "manifest").to_pylist()
    assert sorted(row["id"] for row in manifest) == [f"n{i}" for i in range(len(GOOD))]
    for row in manifest:
        media = Path(row["output_uri"].removeprefix("file://"))
        assert media.is_file() and media.stat().st_size == row["bytes"]
        frames = decode_media(media.read_bytes(), row["mime_type"])
        assert frames.shape[0] == 1 and frames.shape[-1] == 3
    errors = read_folder(out / "errors").to_pylist()
    assert [(row["id"], row["error_stage"]) for row in errors] == [("bad", "validate")]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["outputs_written"], summary["rows_failed"]) == (len(GOOD) + 1, len(GOOD), 1)


def test_each_pool_ran_on_the_node_with_its_resources(cluster, nightly_run):
    assert nightly_run["status"] == "SUCCEEDED", nightly_run["logs"][-4000:]
    check_placement(cluster, nightly_run)


def test_each_node_exported_the_metrics_of_its_own_pools(nightly_run):
    """Live Ray node endpoints: denoise series only on the large_gpu node, encode/decode only on the head."""
    head, worker = nightly_run["series"]["head"], nightly_run["series"]["worker1"]
    denoise_rows = worker.get(("ray_latentmill_stage_rows_total", "denoise", "latentmill-nightly"), 0)
    assert 0 < denoise_rows <= len(GOOD)
    assert worker.get(("ray_latentmill_stage_batch_seconds_count", "denoise", "latentmill-nightly"), 0) >= 1
    assert worker.get(("ray_latentmill_model_load_seconds", "denoise", "latentmill-nightly"), 0) > 0
    assert not any(stage != "denoise" for _, stage, _ in worker), sorted(worker)
    for stage in ("encode", "decode"):
        assert head.get(("ray_latentmill_stage_rows_total", stage, "latentmill-nightly"), 0) > 0, sorted(head)
    assert not any(stage == "denoise" for _, stage, _ in head), sorted(head)


def test_nightly_job_pushed_its_counts(nightly_run, pushgateway):
    assert nightly_run["status"] == "SUCCEEDED", nightly_run["logs"][-4000:]
    found = {}
    for family in text_string_to_metric_families(pushgateway.metrics_text()):
        for sample in family.samples:
            if sample.labels.get("job") == "latentmill-nightly":
                found[(sample.name, sample.labels.get("stage"), sample.labels.get("outcome"))] = sample.value
    assert found[("latentmill_job_outputs_total", None, None)] == len(GOOD)
    assert found[("latentmill_job_rows_read_total", None, None)] == len(GOOD) + 1
    assert found[("latentmill_job_rows_total", "validate", "failed")] == 1
    assert found[("latentmill_job_rows_total", "denoise", "ok")] == len(GOOD)
    assert found[("latentmill_job_error_budget_exceeded", None, None)] == 0


# A stage actor's counters on a real Ray node's Prometheus endpoint: at 0 from its start, then rising.
# A driver process starts one actor holding a StageMetrics on the head node, as a stage actor does after
# loading its model. Before its first batch the node's endpoint must serve
# ``ray_latentmill_stage_rows_total`` at 0 for every outcome and ``ray_latentmill_stage_bytes_written_total``
# at 0; after a batch the same series hold the batch's counts. Before, the series appeared only with the
# first batch, at its value, so rate() over a short run was 0.

ACTOR_JOB = "latentmill-actor-start-test"
ROWS, BYTES = "ray_latentmill_stage_rows_total", "ray_latentmill_stage_bytes_written_total"

DRIVER = f"""
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0, resources={{"small_gpu": 0.001}})  # on the head node
class Stage:
    def __init__(self):
        from latentmill.metrics import StageMetrics
        self.metrics = StageMetrics("encode", "m", {ACTOR_JOB!r})

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


def actor_series(url: str) -> dict[tuple[str, str], float]:
    """(sample name, outcome) -> value of the actor-start test job's counters on a node's endpoint."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {(sample.name, sample.labels.get("outcome", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name in (ROWS, BYTES) and sample.labels.get("job") == ACTOR_JOB}


def wait_for_series(url: str, expected: dict, timeout: float = 60) -> dict:
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        found = actor_series(url)
        if found == expected:
            return found
        time.sleep(0.5)
    return found


def read_line(proc, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"the driver ended or hung: {proc.poll()}")


def test_actor_counters_exist_at_zero_before_the_first_batch_then_rise(cluster):
    import subprocess
    import sys

    [head] = [node for node in cluster.nodes if node.name == "head"]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address], env=cluster.env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert read_line(proc) == "ready"
        zero = {(ROWS, "ok"): 0, (ROWS, "failed"): 0, (BYTES, ""): 0}
        assert wait_for_series(head.metrics_url, zero) == zero, "the counters did not appear at 0 before a batch"
        proc.stdin.write("batch\n")
        proc.stdin.flush()
        assert read_line(proc) == "done"
        counted = {(ROWS, "ok"): 3, (ROWS, "failed"): 1, (BYTES, ""): 42}
        assert wait_for_series(head.metrics_url, counted) == counted
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
