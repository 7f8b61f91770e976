"""infra/latentmill-alerts.yml: promtool's rule unit tests, and the nightly job pushing under the alert's job name.

`promtool` is Debian's `prometheus` package (infra/install-test-services.sh installs it); without it the promtool
test is skipped. tests/integration/test_nightly_alerting.py runs the same rules over what a real Pushgateway
holds after a good and a failed run.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from latentmill.jobs import entry, nightly

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra" / "latentmill-alerts.yml"
RULE_TESTS = Path(__file__).with_name("latentmill-alerts.test.yml")
JOB_CLUSTER_YAML = ROOT / "infra" / "job-cluster.yaml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian package prometheus) not installed")


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    """Nightly not succeeding for 26 h, a failed run after a good one, no pushes at all, pushes under another job."""
    result = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_tests_cover_every_nightly_alert():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [str((RULE_TESTS.parent / path).resolve()) for path in tests["rule_files"]] == [str(ALERTS)]
    tested = {case["alertname"] for group in tests["tests"] for case in group["alert_rule_test"]
              if case.get("exp_alerts")}
    nightly_alerts = {name for name, rule in alert_rules().items() if nightly.JOB_NAME in rule["expr"]}
    assert len(nightly_alerts) >= 2 and nightly_alerts <= tested
    assert any("absent(" in alert_rules()[name]["expr"] for name in nightly_alerts), "no absent() guard"


def nightly_config(argv: list[str]):
    args = nightly.build_parser().parse_args(argv)
    input_uri, output_uri = nightly.partition_uris(args.input_root, args.output_root, args.date)
    return entry.load(args, {"input": {"uri": input_uri}, "output": {"uri": output_uri}})


def test_the_nightly_on_the_cluster_job_file_pushes_under_the_alerts_job_name():
    """infra/job-cluster.yaml used to set metrics.job_name: latentmill, so the nightly never matched its alert."""
    config = nightly_config(["--input-root", "s3://b/prompts", "--output-root", "s3://b/renders",
                             "--date", "2026-11-21", "--config", str(JOB_CLUSTER_YAML)])
    assert config.metrics.job_name == nightly.JOB_NAME
    for name, rule in alert_rules().items():
        if name.startswith("LatentmillNightly"):
            assert set(re.findall(r'job="([^"]*)"', rule["expr"])) == {nightly.JOB_NAME}, name


def test_the_kuberay_nightly_pushes_under_the_alerts_job_name():
    job = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayjob-nightly.yaml").read_text())
    words = shlex.split(job["spec"]["entrypoint"])[3:]
    config_at = words.index("--config") + 1
    assert Path(words[config_at]).name == JOB_CLUSTER_YAML.name
    words[config_at] = str(JOB_CLUSTER_YAML)  # the image's copy of the same file
    config = nightly_config(words)
    assert config.metrics.job_name == nightly.JOB_NAME
    assert config.metrics.pushgateway
