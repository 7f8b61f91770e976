"""The dashboard's run panels against a real Prometheus: last run = the Pushgateway, running job = the driver.

A previous run pushed its final values to a real Pushgateway; a second run of the same job and model is
going on, its driver serving its counts so far (more outputs than the pushed run had). A real Prometheus
scrapes both with infra/prometheus.yml's own scrape settings (honor_labels; only the targets and the
interval changed). Every "last run" panel's query must return the pushed run's values, and every live
driver panel the running driver's: before, "Outputs, last run" showed the running driver's count.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from latentmill import metrics, schema

try:
    from tests.pushgateway import Pushgateway, find_pushgateway
    from tests.s3server import free_port
except ImportError:  # pytest run without the repository root on sys.path
    from pushgateway import Pushgateway, find_pushgateway
    from s3server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
JOB, MODEL = "latentmill-sources-test", "builtin:tiny-image"


def result_batch() -> dict[str, np.ndarray]:
    """3 outputs, 2 input rows that failed (validate, denoise): 5 rows read, 600 bytes."""
    return {
        schema.ID: np.array(["a", "b", "c", "d", "e"], dtype=object),
        schema.SAMPLE_INDEX: np.array([0, 0, 0, 0, 0]),
        schema.ERROR_STAGE: np.array(["", "", "", "validate", "denoise"], dtype=object),
        schema.BYTES: np.array([100, 200, 300, 0, 0]),
    }


class Summary:
    wall_seconds = 12.5
    seconds_to_first_output = 3.0
    budget_exceeded = False


class Prometheus:
    def __init__(self, work: Path, scrape_configs: list[dict]) -> None:
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": scrape_configs}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(work / "prometheus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.work = work

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            reply = json.loads(response.read())
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def wait(self, expr: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.work / 'prometheus.log').read_text()[-2000:]}")
            try:
                if len(self.query(expr)) >= count:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never had {count} series of {expr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    if shutil.which("prometheus") is None or find_pushgateway() is None:
        pytest.skip("prometheus and prometheus-pushgateway are not installed (infra/install-test-services.sh)")
    work = tmp_path_factory.mktemp("prometheus")
    with Pushgateway(work / "pushgateway") as gateway:
        previous = metrics.DriverMetrics(MODEL, JOB)  # the last finished run: pushed
        previous.record_results(result_batch())
        assert previous.finish(Summary(), pushgateway=gateway.url)
        running = metrics.DriverMetrics(MODEL, JOB)  # the run going on now: served
        running.record_results(result_batch())
        running.record_results(result_batch())
        port = running.serve(0)
        try:
            shipped = {job["job_name"]: job for job in yaml.safe_load((INFRA / "prometheus.yml").read_text())
                       ["scrape_configs"]}
            scrape = []
            for name, target in (("pushgateway", gateway.port), ("latentmill-driver", port)):
                job = {key: value for key, value in shipped[name].items() if key != "scrape_interval"}
                job["static_configs"] = [{"targets": [f"127.0.0.1:{target}"]}]
                scrape.append(job)
            server = Prometheus(work, scrape)
            try:
                server.wait(f'{metrics.JOB_OUTPUTS}{{job="{JOB}"}}', 2)  # pushed and live
                server.wait(f'{metrics.JOB_LAST_SUCCESS}{{job="{JOB}"}}', 1)
                yield server
            finally:
                server.stop()
        finally:
            running.stop()


def panel_queries() -> dict[str, list[str]]:
    """Title -> the exprs of every panel that reads the driver's metrics, variables filled in."""
    dashboard = json.loads((INFRA / "grafana" / "latentmill-dashboard.json").read_text())
    found = {}
    for panel in dashboard["panels"]:
        exprs = [target["expr"] for target in panel.get("targets", [])]
        if any("latentmill_job_" in expr for expr in exprs):
            found[panel["title"]] = [expr.replace("$job", JOB).replace("$model", ".*")
                                     .replace("$__rate_interval", "1m") for expr in exprs]
    return found


def values(result: list[dict], by: str | None = None):
    if by is None:
        (series,) = result
        return float(series["value"][1])
    return {series["metric"][by]: float(series["value"][1]) for series in result}


def test_last_run_panels_show_the_pushed_run_not_the_running_driver(prometheus):
    queries = panel_queries()
    last_run = {title: exprs for title, exprs in queries.items() if "last run" in title.lower()
                or title.startswith(("Since last success", "Error budget exceeded", "First output after"))}
    assert len(last_run) == 8
    for title, exprs in last_run.items():
        for expr in exprs:
            assert prometheus.query(expr), f"{title!r} shows nothing: {expr}"
    (outputs,) = last_run["Outputs, last run"]
    assert values(prometheus.query(outputs)) == 3  # the running driver has 6 so far
    (rows,) = last_run["Rows read, last run"]
    assert values(prometheus.query(rows)) == 5
    (written,) = last_run["Bytes written, last run"]
    assert values(prometheus.query(written)) == 600
    (failed,) = last_run["Failed rows, last run"]
    assert values(prometheus.query(failed), by="stage") == {"validate": 1, "denoise": 1}
    (wall,) = last_run["Wall time, last run"]
    assert values(prometheus.query(wall)) == 12.5
    (since,) = last_run["Since last success"]
    assert 0 <= values(prometheus.query(since)) < 600


def test_running_job_panels_show_the_live_driver_only(prometheus):
    queries = panel_queries()
    live = {title: exprs for title, exprs in queries.items() if "running job" in title.lower()}
    assert live
    outputs, rows_read = live["Outputs and rows read, running job"]
    assert values(prometheus.query(outputs)) == 6  # the pushed run had 3
    assert values(prometheus.query(rows_read)) == 10
    (failed,) = live["Failed rows by stage, running job"]
    assert values(prometheus.query(failed), by="stage") == {
        stage: (2 if stage in ("validate", "denoise") else 0) for stage in metrics.PIPELINE}
