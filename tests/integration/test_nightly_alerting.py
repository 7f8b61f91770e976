"""A good nightly run, then one past its error budget, pushed to a real Pushgateway; the alerts over the result.

The run metrics go through DriverMetrics.finish as run_job calls it, with the config the nightly entry builds
from infra/job-cluster.yaml. What the Pushgateway then exposes (what Prometheus would scrape) is fed to
`promtool test rules` with infra/latentmill-alerts.yml: the error-budget alert fires at once, and the nightly
alert fires once the good run's success time is more than 26 h old.
"""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from latentmill import metrics
from latentmill.jobs import entry, nightly

try:
    from tests.pushgateway import Pushgateway, find_pushgateway
except ImportError:  # pytest run without the repository root on sys.path
    from pushgateway import Pushgateway, find_pushgateway

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra" / "latentmill-alerts.yml"
JOB_CLUSTER_YAML = ROOT / "infra" / "job-cluster.yaml"


class Summary:
    def __init__(self, budget_exceeded: bool) -> None:
        self.wall_seconds = 60.0
        self.seconds_to_first_output = 5.0
        self.budget_exceeded = budget_exceeded


@pytest.fixture
def pushgateway(tmp_path):
    if find_pushgateway() is None:
        pytest.skip("prometheus-pushgateway is not installed (infra/install-test-services.sh installs it)")
    with Pushgateway(tmp_path / "pushgateway") as gateway:
        yield gateway


def nightly_run(pushgateway_url: str, budget_exceeded: bool, now: float, monkeypatch) -> None:
    args = nightly.build_parser().parse_args([
        "--input-root", "s3://b/prompts", "--output-root", "s3://b/renders", "--date", "2026-11-21",
        "--config", str(JOB_CLUSTER_YAML), "--pushgateway", pushgateway_url,
    ])
    config = entry.load(args, {"input": {"uri": "s3://b/prompts/date=2026-11-21/"},
                               "output": {"uri": "s3://b/renders/2026-11-21"}})
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: now))
    driver = metrics.DriverMetrics(config.model.path, config.metrics.job_name)  # as run_job does
    assert driver.finish(Summary(budget_exceeded), config.metrics.pushgateway) is True
    monkeypatch.undo()


def scraped(gateway: Pushgateway) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(gateway.metrics_text()):
        for sample in family.samples:
            if sample.name.startswith("latentmill_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if v != ""))
                found[(sample.name, labels)] = sample.value
    return found


def test_a_failed_nightly_keeps_the_last_success_and_the_alerts_fire(pushgateway, monkeypatch, tmp_path):
    nightly_run(pushgateway.url, budget_exceeded=False, now=0.0, monkeypatch=monkeypatch)  # good run at t=0
    nightly_run(pushgateway.url, budget_exceeded=True, now=3600.0, monkeypatch=monkeypatch)  # failed, 1 h later
    series = scraped(pushgateway)
    by_name = {}
    for (name, labels), value in series.items():
        by_name.setdefault(name, []).append((dict(labels), value))
    (success,) = by_name[metrics.JOB_LAST_SUCCESS]
    assert success[1] == 0.0, "the failed run erased or changed the good run's success time"
    assert success[0]["job"] == nightly.JOB_NAME
    (budget,) = by_name[metrics.JOB_BUDGET_EXCEEDED]
    assert budget == ({"job": nightly.JOB_NAME, "model": success[0]["model"]}, 1.0)
    assert by_name[metrics.JOB_OUTPUTS], "the failed run's own metrics are there too"

    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    # Prometheus scrapes these values every minute from t=0 on; the good run pushed its success at t=0.
    input_series = []
    for (name, labels), value in sorted(series.items()):
        selector = ", ".join(f'{key}="{val}"' for key, val in labels)
        input_series.append({"series": f"{name}{{{selector}}}", "values": f"{value:g}x1800"})
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "LatentmillErrorBudgetExceeded", "exp_alerts": [{
                    "exp_labels": {"severity": "ticket", "job": nightly.JOB_NAME, "model": success[0]["model"]},
                    "exp_annotations": {"summary": f"{nightly.JOB_NAME}: more rows failed than max_failed allows "
                                                   "(see the run's errors/ Parquet)"},
                }]},
                {"eval_time": "25h", "alertname": "LatentmillNightlyMissing", "exp_alerts": []},
                {"eval_time": "26h20m", "alertname": "LatentmillNightlyMissing", "exp_alerts": [{
                    "exp_labels": {"severity": "page", "job": nightly.JOB_NAME},
                    "exp_annotations": {"summary": "latentmill nightly render has not succeeded for 1d 2h 20m 0s"},
                }]},
                {"eval_time": "26h20m", "alertname": "LatentmillNightlyNeverSucceeded", "exp_alerts": []},
            ],
        }],
    }
    test_file = tmp_path / "alerts.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
