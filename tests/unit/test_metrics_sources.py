"""Live metrics that rate() can use, and a dashboard that keeps the live and the pushed sources apart.

* Counters exist at 0 before the first batch, in the stage actors (ray.util.metrics) and in the driver's
  registry: a series that first appears at its final value gives Prometheus no increase to see, so
  rate()/increase() over a short run showed 0.
* The dashboard's "last run" panels read the Pushgateway only (``instance=""``) and its live panels the
  live sources only (``instance!=""`` for the driver's endpoint). Before, the last-run stats took the
  max over the running driver's series and the previous run's pushed ones.

(tests/integration/test_dashboard_sources.py checks the selectors against a real Prometheus and
Pushgateway; tests/integration/test_cluster.py the actors' zeros on a real Ray node.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from latentmill import metrics, schema

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "latentmill-dashboard.json"


# ---- counters start at 0 -----------------------------------------------------------------------------


class Recorder:
    """Stands in for the Cython metric under a ray.util.metrics object: what reaches Ray's exporter."""

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, str]]] = []

    def record(self, value, tags=None):
        self.points.append((value, dict(tags or {})))


def test_stage_actor_counters_exist_at_zero_before_the_first_batch():
    backend = metrics._RayStageMetrics()  # the real ray.util.metrics objects
    backend.rows._metric, backend.bytes._metric = rows, written = Recorder(), Recorder()
    stage = metrics.StageMetrics("decode", "builtin:tiny-image", "nightly", backend=backend)
    tags = {"stage": "decode", "model": "builtin:tiny-image", "job": "nightly"}
    # Before any batch: one 0 for every outcome label value, and one for bytes.
    assert sorted(rows.points, key=lambda point: point[1]["outcome"]) == [
        (0, {**tags, "outcome": "failed"}), (0, {**tags, "outcome": "ok"})]
    assert written.points == [(0, tags)]
    assert not stage._warned
    # Then a batch adds to those same series.
    with stage.batch() as record:
        record.outcome({schema.ERROR_STAGE: np.array(["", "decode", ""], dtype=object),
                        schema.BYTES: np.array([5, 0, 7])}, [0, 1, 2])
    assert rows.points[2:] == [(2, {**tags, "outcome": "ok"}), (1, {**tags, "outcome": "failed"})]
    assert written.points[1:] == [(12, tags)]


def test_stage_metrics_start_the_backend_once_before_anything_else():
    calls = []

    class Backend:
        def start(self, tags):
            calls.append(("start", dict(tags)))

        def model_loaded(self, seconds, tags):
            calls.append(("loaded",))

        def in_flight(self, value, tags):
            calls.append(("in_flight",))

        def observe_batch(self, *args):
            calls.append(("batch",))

    stage = metrics.StageMetrics("encode", "m", "j", backend=Backend())
    assert calls == [("start", {"stage": "encode", "model": "m", "job": "j"})]
    stage.model_loaded(1.0)
    with stage.batch():
        pass
    assert [call[0] for call in calls].count("start") == 1


def test_a_failing_start_never_fails_the_actor(caplog):
    class Broken:
        def start(self, tags):
            raise RuntimeError("no metrics agent")

    stage = metrics.StageMetrics("encode", "m", "j", backend=Broken())
    assert stage._warned
    assert "metrics disabled" in caplog.text


def driver_series(text: str) -> dict[tuple[str, tuple], tuple[str, float]]:
    """(sample name, sorted labels) -> (family type, value)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): (family.type, sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_driver_counter_series_exist_at_zero_before_any_batch():
    found = driver_series(metrics.DriverMetrics("m", "j").text())
    base = (("job", "j"), ("model", "m"))

    def at_zero(name, **labels):
        key = (name, tuple(sorted({**dict(base), **labels}.items())))
        assert key in found, f"{name}{labels} does not exist before the first batch"
        assert found[key][1] == 0, key

    # Every (stage, outcome) a result row can count, including a resumed run's already_done rows.
    pairs = {pair for error_stage in ("", *metrics.PIPELINE, schema.ALREADY_DONE)
             for pair in metrics.stage_outcomes(error_stage)}
    pairs |= {(stage, metrics.FAILED) for stage in metrics.PIPELINE}
    for stage, outcome in sorted(pairs):
        at_zero(metrics.JOB_ROWS, stage=stage, outcome=outcome)
    for name in (metrics.JOB_ROWS_READ, metrics.JOB_OUTPUTS, metrics.JOB_BYTES):
        at_zero(name)
    for stage in schema.STAGES:  # the per-row seconds histogram, count and sum
        at_zero(metrics.JOB_ROW_SECONDS + "_count", stage=stage)
        at_zero(metrics.JOB_ROW_SECONDS + "_sum", stage=stage)
    # And no counter sample anywhere that is not 0 yet.
    assert all(value == 0 for (name, _), (kind, value) in found.items() if kind == "counter"
               and name.endswith("_total"))


# ---- dashboard: last-run panels read the Pushgateway, live panels the live sources -------------------

PUSHED = 'instance=""'  # the Pushgateway exports instance=""; with honor_labels the series has none
LIVE_DRIVER = 'instance!=""'  # the driver's endpoint, scraped with the target's instance
DRIVER_METRICS = {getattr(metrics, name) for name in dir(metrics) if name.startswith("JOB_")}
ACTOR_METRICS = {metrics.STAGE_BATCH_SECONDS, metrics.STAGE_ROWS, metrics.STAGE_BYTES,
                 metrics.MODEL_LOAD_SECONDS, metrics.POOL_ACTORS, metrics.BATCHES_IN_FLIGHT}
SELECTOR = re.compile(r"\b(latentmill_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")


def family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if name.removesuffix(suffix) in DRIVER_METRICS | ACTOR_METRICS:
            return name.removesuffix(suffix)
    return name


MATCHER = re.compile(r'[a-zA-Z_]+\s*(?:!=|=~|!~|=)\s*"[^"]*"')


def matchers(selector: str | None) -> set[str]:
    """The label matchers of a selector's braces, blanks removed: {'job=~"$job"', 'instance=""'}."""
    return {re.sub(r"\s+", "", part) for part in MATCHER.findall(selector or "")}


def dashboard_panels() -> list[tuple[str, dict]]:
    """(title of the row the panel is in, panel) for every panel with queries."""
    panels, row = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif panel.get("targets"):
            panels.append((row, panel))
    return panels


def is_last_run(row: str, panel: dict) -> bool:
    return row.lower().startswith("last run") or "last run" in panel["title"].lower()


def test_last_run_panels_read_only_the_pushgateway_and_live_panels_only_live_sources():
    """The rule: a "last run" panel (in the "Last run" row, or titled "..., last run") queries only the
    driver's metrics, and every selector in it carries instance="" (the pushed series); every other
    panel is live: any driver metric in it carries instance!="" (the running driver's endpoint), and
    its other latentmill_* metrics are the stage actors', which only Ray's node endpoints serve."""
    last_run = live_driver = 0
    for row, panel in dashboard_panels():
        pushed_panel = is_last_run(row, panel)
        if "last run" in panel["title"].lower():
            assert row.lower().startswith("last run"), f"{panel['title']!r} is outside the Last run row"
        for target in panel["targets"]:
            expr = target["expr"]
            for name, selector in SELECTOR.findall(expr):
                where = f"panel {panel['title']!r}: {name} in {expr!r}"
                if pushed_panel:
                    assert family(name) in DRIVER_METRICS, f"{where}: not a pushed metric"
                    assert PUSHED in matchers(selector), f"{where}: must select {PUSHED} (the Pushgateway)"
                elif family(name) in DRIVER_METRICS:
                    assert LIVE_DRIVER in matchers(selector), f"{where}: must select {LIVE_DRIVER} (live driver)"
                    live_driver += 1
                else:
                    assert family(name) in ACTOR_METRICS, f"{where}: unknown source"
                    assert PUSHED not in matchers(selector), where
        last_run += pushed_panel
    assert last_run >= 8, "the last run's stats are missing"
    assert live_driver >= 1, "no panel shows the running driver"


def test_the_rule_catches_a_mixed_last_run_panel():
    """The old "Outputs, last run" query (max over the live driver and the pushed run) breaks the rule."""
    (name, selector), = SELECTOR.findall('max by (job) (latentmill_job_outputs_total{job=~"$job"})')
    assert PUSHED not in matchers(selector)
    assert matchers('job=~"$job", instance = ""') == {'job=~"$job"', PUSHED}
    assert matchers('instance!=""') == {LIVE_DRIVER}
