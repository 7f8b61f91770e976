"""Metric names, the stage and driver recorders, the dashboard and the scrape config (no Ray, no services)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from latentmill import metrics, schema
from latentmill.config import ConfigError, load_config
from latentmill.jobs.cli import build_parser, run_overrides

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus_client's parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# ---- names -------------------------------------------------------------------------------------------


def metric_names() -> list[str]:
    return [getattr(metrics, name) for name in dir(metrics) if name.isupper() and
            isinstance(getattr(metrics, name), str) and getattr(metrics, name).startswith("latentmill_")]


def test_metric_names_are_prometheus_names_in_the_latentmill_namespace():
    names = metric_names()
    assert len(names) == len(set(names)) >= 14
    for name in names:
        assert re.fullmatch(r"latentmill_[a-z0-9_]+", name), name
    assert metrics.LABELS == ("stage", "model", "job")


# ---- driver ------------------------------------------------------------------------------------------


def result_batch() -> dict[str, np.ndarray]:
    """What the driver receives: 3 outputs (one of them sample 1 of a row), 1 validate failure,
    1 denoise failure, 1 row a previous run already did."""
    return {
        schema.ID: np.array(["a", "b-s0", "b-s1", "c", "d", "e"], dtype=object),
        schema.SAMPLE_INDEX: np.array([0, 0, 1, 0, 0, 0]),
        schema.ERROR_STAGE: np.array(["", "", "", "validate", "denoise", schema.ALREADY_DONE], dtype=object),
        schema.BYTES: np.array([100, 200, 300, 0, 0, 0]),
        "encode_seconds": np.array([0.1, 0.2, 0.2, 0.0, 0.3, 0.0]),
        "denoise_seconds": np.array([1.0, 2.0, 2.0, 0.0, 0.0, 0.0]),
        "decode_seconds": np.array([0.5, 0.5, 0.5, 0.0, 0.0, 0.0]),
    }


def test_stage_outcomes_follow_the_pipeline_order():
    assert metrics.stage_outcomes("") == [("validate", "ok"), ("encode", "ok"), ("denoise", "ok"), ("decode", "ok")]
    assert metrics.stage_outcomes("denoise") == [("validate", "ok"), ("encode", "ok"), ("denoise", "failed")]
    assert metrics.stage_outcomes("validate") == [("validate", "failed")]
    assert metrics.stage_outcomes(schema.ALREADY_DONE) == [("validate", "already_done")]
    assert metrics.stage_outcomes("somewhere") == [("somewhere", "failed")]


def test_driver_metrics_count_a_result_batch():
    driver = metrics.DriverMetrics("builtin:tiny-image", "nightly")
    driver.record_results(result_batch())
    driver.record_results(result_batch())
    found = samples(driver.text())
    base = {"model": "builtin:tiny-image", "job": "nightly"}
    assert value(found, "latentmill_job_rows_read_total", **base) == 2 * 5  # sample 1 of "b" is not a new row
    assert value(found, "latentmill_job_outputs_total", **base) == 2 * 3
    assert value(found, "latentmill_job_bytes_written_total", **base) == 2 * 600
    rows = {stage: {outcome: value(found, "latentmill_job_rows_total", stage=stage, outcome=outcome, **base)
                    for outcome in ("ok", "failed")} for stage in ("validate", "encode", "denoise", "decode")}
    assert rows == {
        "validate": {"ok": 8, "failed": 2},
        "encode": {"ok": 8, "failed": 0},
        "denoise": {"ok": 6, "failed": 2},
        "decode": {"ok": 6, "failed": 0},
    }
    assert value(found, "latentmill_job_rows_total", stage="validate", outcome="already_done", **base) == 2
    assert value(found, "latentmill_job_row_seconds_count", stage="denoise", **base) == 6
    assert value(found, "latentmill_job_row_seconds_sum", stage="denoise", **base) == pytest.approx(10.0)
    # Never a per-row label: no id, no uri anywhere.
    assert all(set(dict(labels)) <= {"stage", "outcome", "model", "job", "le"} for _, labels in found)


class _Summary:
    wall_seconds = 12.5
    seconds_to_first_output = 3.0
    budget_exceeded = False


def test_driver_metrics_finish_sets_final_gauges():
    driver = metrics.DriverMetrics("m", "j")
    assert driver.finish(_Summary()) is True
    found = samples(driver.text())
    assert value(found, "latentmill_job_wall_seconds", model="m", job="j") == 12.5
    assert value(found, "latentmill_job_first_output_seconds", model="m", job="j") == 3.0
    assert value(found, "latentmill_job_error_budget_exceeded", model="m", job="j") == 0
    assert value(found, "latentmill_job_last_success_timestamp_seconds", model="m", job="j") > 1.7e9

    over = _Summary()
    over.budget_exceeded = True
    failed_run = metrics.DriverMetrics("m", "j")
    failed_run.finish(over)
    found = samples(failed_run.text())
    assert value(found, "latentmill_job_error_budget_exceeded", model="m", job="j") == 1
    assert ("latentmill_job_last_success_timestamp_seconds", (("job", "j"), ("model", "m"))) not in found


def test_driver_serves_on_loopback_and_stops():
    driver = metrics.DriverMetrics("m", "j")
    port = driver.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert value(samples(text), "latentmill_job_outputs_total", model="m", job="j") == 0
        assert driver._server.server_address[0] == "127.0.0.1"
        # The port is taken now: a second driver on it is a clear error.
        with pytest.raises(metrics.MetricsError, match=f"127.0.0.1:{port}"):
            metrics.DriverMetrics("m", "j").serve(port)
    finally:
        driver.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    driver.stop()  # idempotent
    assert metrics.DriverMetrics("m", "j").serve(None) is None


def test_a_failed_push_is_reported_not_raised(caplog):
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = metrics.DriverMetrics("m", "j")
    with pytest.raises(metrics.MetricsError, match="Pushgateway"):
        driver.push(f"http://127.0.0.1:{port}", timeout=2)
    assert driver.finish(_Summary(), pushgateway=f"http://127.0.0.1:{port}") is False
    assert "could not push" in caplog.text


# ---- stage actors ------------------------------------------------------------------------------------


class FakeBackend:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def start(self, tags):
        self.calls.append(("start", tags["stage"]))

    def model_loaded(self, seconds, tags):
        self.calls.append(("loaded", seconds, tags["stage"]))

    def in_flight(self, value, tags):
        if self.fail:
            raise RuntimeError("metrics agent gone")
        self.calls.append(("in_flight", value))

    def observe_batch(self, seconds, rows_ok, rows_failed, bytes_written, tags):
        self.calls.append(("batch", rows_ok, rows_failed, bytes_written, tags))


def test_stage_metrics_record_a_batch_and_in_flight():
    backend = FakeBackend()
    stage = metrics.StageMetrics("decode", "builtin:tiny-image", "nightly", backend=backend)
    stage.model_loaded(2.5)
    out = {schema.ERROR_STAGE: np.array(["", "decode", "", "validate"], dtype=object),
           schema.BYTES: np.array([10, 0, 32, 0])}
    with stage.batch() as record:
        assert backend.calls[-1] == ("in_flight", 1)
        record.outcome(out, [0, 1, 2])  # row 3 arrived failed: not this stage's
    assert backend.calls[:2] == [("start", "decode"), ("loaded", 2.5, "decode")]
    assert backend.calls[-2] == ("in_flight", 0)
    kind, ok, failed, written, tags = backend.calls[-1]
    assert (kind, ok, failed, written) == ("batch", 2, 1, 42)
    assert tags == {"stage": "decode", "model": "builtin:tiny-image", "job": "nightly"}


def test_stage_metrics_survive_an_exception_in_the_batch():
    backend = FakeBackend()
    stage = metrics.StageMetrics("encode", "m", backend=backend)
    with pytest.raises(ValueError), stage.batch():
        raise ValueError("boom")
    assert ("in_flight", 0) in backend.calls
    assert backend.calls[-1][:4] == ("batch", 0, 0, 0)
    assert backend.calls[-1][4]["job"] == metrics.DEFAULT_JOB


def test_a_failing_metrics_backend_never_fails_the_stage(caplog):
    stage = metrics.StageMetrics("denoise", "m", "j", backend=FakeBackend(fail=True))
    for _ in range(3):
        with stage.batch() as record:
            record.outcome({schema.ERROR_STAGE: np.array([""], dtype=object)}, [0])
    assert caplog.text.count("metrics disabled") == 1


def test_ray_stage_metrics_record_without_a_cluster():
    """The real backend (ray.util.metrics) accepts every call, zero counts included, outside Ray too."""
    stage = metrics.StageMetrics("encode", "m", "j")
    assert isinstance(stage._m, metrics._RayStageMetrics)
    stage.model_loaded(1.0)
    with stage.batch() as record:
        record.outcome({schema.ERROR_STAGE: np.array(["", "encode"], dtype=object)}, [0, 1])
    stage.observe_batch(0.1, 0, 0, 0)
    assert not stage._warned


# ---- config and CLI ----------------------------------------------------------------------------------


def test_metrics_settings_defaults_and_flags():
    config = load_config(None, {"input": {"uri": "in"}, "output": {"uri": "out"}})
    assert config.metrics.port is None
    assert config.metrics.address == "127.0.0.1"
    assert config.metrics.pushgateway is None
    assert config.metrics.job_name == "latentmill"
    args = build_parser().parse_args(["run", "--input", "in", "--output", "out", "--pushgateway",
                                      "http://127.0.0.1:9091", "--metrics-port", "9464"])
    assert run_overrides(args)["metrics"] == {"pushgateway": "http://127.0.0.1:9091", "port": 9464}
    with pytest.raises(ConfigError, match="metrics.port"):
        load_config(None, {"input": {"uri": "in"}, "output": {"uri": "out"}, "metrics": {"port": 70000}})
    with pytest.raises(ConfigError, match="metrics.job_name"):
        load_config(None, {"input": {"uri": "in"}, "output": {"uri": "out"}, "metrics": {"job_name": ""}})


# ---- dashboard and scrape config ---------------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "time", "le", "stage", "job", "model", "outcome", "ip", "instance", "and", "or", "unless", "on", "ignoring",
}
RAY_METRICS_USED = {"ray_node_gpus_utilization"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((INFRA / "grafana" / "latentmill-dashboard.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_dashboard_queries_use_only_defined_metrics_and_labels():
    names = set(metric_names())
    known = names | {f"{name}_{suffix}" for name in names for suffix in ("bucket", "sum", "count")}
    known |= {name.removesuffix("_total") for name in names}
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    used = set()
    for expr in exprs:
        stripped = re.sub(r'"[^"]*"', '""', expr)  # label values and regexes
        stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", stripped):
            if word.startswith("latentmill_") or word.startswith("ray_"):
                assert word in known or word in RAY_METRICS_USED, f"unknown metric {word!r} in {expr!r}"
                used.add(word)
            else:
                assert word in PROMQL_WORDS, f"unexpected word {word!r} in {expr!r}"
    # Throughput, errors and latency per stage, pool sizes, in-flight batches, and the pushed run results.
    for needed in (metrics.STAGE_ROWS, metrics.STAGE_BATCH_SECONDS + "_bucket", metrics.POOL_ACTORS,
                   metrics.BATCHES_IN_FLIGHT, metrics.MODEL_LOAD_SECONDS, metrics.STAGE_BYTES,
                   metrics.JOB_OUTPUTS, metrics.JOB_ROWS, metrics.JOB_LAST_SUCCESS, metrics.JOB_BUDGET_EXCEEDED):
        assert needed in used, f"the dashboard shows nothing of {needed}"


def test_scrape_config_covers_ray_nodes_and_the_pushgateway():
    config = yaml.safe_load((INFRA / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"ray", "pushgateway", "latentmill-driver"} <= set(jobs)
    assert all(job.get("honor_labels") for job in jobs.values()), "latentmill's own job label must win"
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    # The relabelling gives Ray-exported actor metrics latentmill's names back (Prometheus anchors regexes).
    (rule,) = jobs["ray"]["metric_relabel_configs"]
    pattern = re.compile(rf"^(?:{rule['regex']})$")
    rename = pattern.sub(rule["replacement"].replace("$1", r"\1"), "ray_latentmill_stage_rows_total")
    assert rename == "latentmill_stage_rows_total"
    assert not pattern.match("ray_node_gpus_utilization")
    assert (INFRA / config["rule_files"][0]).exists()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_scrape_config_and_alert_rules():
    result = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=INFRA, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
