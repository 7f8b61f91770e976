"""A real run with live metrics and a real Pushgateway.

One run of the dataset-synthesis entry point (`python -m latentmill.jobs.synthesize ... --metrics-port P
--pushgateway URL`, called in this process on the session's local Ray; `latentmill run` takes the same
two flags into the same config fields and run_job): the driver's endpoint is scraped while the run goes
on and parsed with prometheus_client's parser; afterwards the Pushgateway's /metrics must show the run's
final counts, and the dataset must hold N samples per valid prompt. (The Ray node endpoint with the stage
actors' series is scraped in test_cluster.py, on a cluster whose metrics report interval we control.)
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from latentmill import metrics
from latentmill.jobs import synthesize

try:
    from tests.helpers import write_table
    from tests.pushgateway import Pushgateway, find_pushgateway
    from tests.s3server import free_port
except ImportError:  # pytest run without the repository root on sys.path
    from helpers import write_table
    from pushgateway import Pushgateway, find_pushgateway
    from s3server import free_port

pytestmark = pytest.mark.slow

JOB_NAME = "latentmill-metrics-test"
GOOD_ROWS = 4
BAD_ROWS = 2  # one empty prompt, one height above limits.max_height: both fail in validate
SAMPLES = 2  # per prompt: GOOD_ROWS * SAMPLES outputs; a bad row is one error row
OUTPUTS = GOOD_ROWS * SAMPLES


def parse(text: str) -> dict:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pick(found: dict, name: str, **labels) -> float | None:
    """The value of the sample `name` whose labels include `labels` (ignoring e.g. instance)."""
    for (sample, sample_labels), value in found.items():
        if sample == name and set(labels.items()) <= set(sample_labels):
            return value
    return None


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    if find_pushgateway() is None:
        pytest.skip("prometheus-pushgateway is not installed (infra/install-test-services.sh installs it)")
    with Pushgateway(tmp_path_factory.mktemp("pushgateway")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def metered_run(tmp_path_factory, ray_local, pushgateway):
    """Run the synthesis job once in this process (on the session's Ray) while a thread scrapes the driver."""
    tmp = tmp_path_factory.mktemp("metered")
    rows = [{"id": f"r{i}", "prompt": f"a small red house number {i}"} for i in range(GOOD_ROWS)]
    rows += [{"id": "empty", "prompt": ""}, {"id": "huge", "prompt": "a huge image", "height": 4096}]
    table = write_table(tmp / "prompts.parquet", rows)
    pool = {"size": 1, "batch_size": 2, "num_cpus": 0.5, "torch_threads": 1}
    job_file = tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump({"stages": {"encode": pool, "denoise": pool, "decode": pool}}))
    port = free_port()
    output = tmp / "out"
    scrapes: list[str] = []
    finished = threading.Event()

    def scrape() -> None:
        while not finished.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    scrapes.append(response.read().decode())
            except OSError:
                pass
            finished.wait(0.25)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    started = time.time()
    try:
        code = synthesize.main([
            "--input", str(table), "--output", str(output), "--samples-per-prompt", str(SAMPLES),
            "--config", str(job_file), "--no-progress", "--job-name", JOB_NAME,
            "--metrics-port", str(port), "--pushgateway", pushgateway.url,
        ])
    finally:
        finished.set()
        scraper.join(timeout=10)
    return {"code": code, "scrapes": scrapes, "output": output, "port": port, "started": started}


def test_driver_endpoint_is_scraped_during_the_run(metered_run):
    assert metered_run["code"] == 0
    scrapes = metered_run["scrapes"]
    assert scrapes, "the driver's /metrics never answered during the run"
    parsed = [parse(text) for text in scrapes]
    names = {family.name for family in text_string_to_metric_families(scrapes[-1])}
    for family in ("latentmill_job_rows", "latentmill_job_rows_read", "latentmill_job_outputs",
                   "latentmill_job_bytes_written", "latentmill_job_row_seconds"):
        assert family in names
    outputs = [pick(found, "latentmill_job_outputs_total", job=JOB_NAME) for found in parsed]
    assert all(value is not None for value in outputs)
    assert outputs == sorted(outputs), "a counter went backwards during the run"
    assert outputs[-1] <= OUTPUTS
    # Served on loopback only, and gone once the run is over.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{metered_run['port']}/metrics", timeout=2)


def test_pushgateway_shows_the_runs_counts(metered_run, pushgateway):
    assert metered_run["code"] == 0
    found = parse(pushgateway.metrics_text())
    labels = {"job": JOB_NAME, "model": "builtin:tiny-image"}
    assert pick(found, "latentmill_job_rows_read_total", **labels) == GOOD_ROWS + BAD_ROWS
    assert pick(found, "latentmill_job_outputs_total", **labels) == OUTPUTS
    assert pick(found, "latentmill_job_rows_total", stage="validate", outcome="failed", **labels) == BAD_ROWS
    assert pick(found, "latentmill_job_rows_total", stage="validate", outcome="ok", **labels) == OUTPUTS
    for stage in ("encode", "denoise", "decode"):
        assert pick(found, "latentmill_job_rows_total", stage=stage, outcome="ok", **labels) == OUTPUTS
        assert pick(found, "latentmill_job_rows_total", stage=stage, outcome="failed", **labels) == 0
        assert pick(found, "latentmill_job_row_seconds_count", stage=stage, **labels) == OUTPUTS
    manifest = pq.read_table(metered_run["output"] / "manifest").to_pylist()
    assert len(manifest) == OUTPUTS
    assert pick(found, "latentmill_job_bytes_written_total", **labels) == sum(row["bytes"] for row in manifest)
    assert pick(found, metrics.JOB_BUDGET_EXCEEDED, **labels) == 0
    assert pick(found, metrics.JOB_LAST_SUCCESS, **labels) >= metered_run["started"]
    assert pick(found, metrics.JOB_WALL_SECONDS, **labels) > 0
    # The Pushgateway records the pushes: the run's group {job} and its success time's group {job, model}.
    assert pick(found, "push_time_seconds", job=JOB_NAME) >= metered_run["started"]


def test_synthesis_wrote_n_samples_per_prompt(metered_run):
    assert metered_run["code"] == 0
    manifest = pq.read_table(metered_run["output"] / "manifest").to_pylist()
    assert sorted(row["id"] for row in manifest) == [f"r{i}-s{k}" for i in range(GOOD_ROWS) for k in range(SAMPLES)]
    assert sorted(row["sample_index"] for row in manifest) == sorted(list(range(SAMPLES)) * GOOD_ROWS)
    assert len({row["seed"] for row in manifest}) == OUTPUTS, "every sample has its own seed"
    assert len({row["sha256"] for row in manifest}) == OUTPUTS, "every sample is a different image"
    errors = pq.read_table(metered_run["output"] / "errors").to_pylist()
    assert sorted(row["id"] for row in errors) == ["empty", "huge"]
