"""A real Prometheus Pushgateway for tests, on 127.0.0.1 and a free port.

The binary is Debian's ``prometheus-pushgateway`` (``infra/install-test-services.sh`` installs it).
Usage::

    with Pushgateway() as gateway:
        push_to_gateway(gateway.url, job="x", registry=registry)
        families = gateway.families()   # parsed /metrics: name -> prometheus_client Metric
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    from tests.s3server import free_port
except ImportError:  # pytest run without the repository root on sys.path
    from s3server import free_port

BINARY_NAMES = ("prometheus-pushgateway", "pushgateway")


def find_pushgateway() -> str | None:
    for name in BINARY_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


class Pushgateway:
    host = "127.0.0.1"

    def __init__(self, work_dir: str | os.PathLike[str] | None = None, start_timeout: float = 30.0) -> None:
        binary = find_pushgateway()
        if binary is None:
            raise RuntimeError("prometheus-pushgateway not found; run infra/install-test-services.sh "
                               "(apt-get install prometheus-pushgateway)")
        self.binary = binary
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="lm-pushgateway-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.start_timeout = start_timeout
        self.log_path = self.work_dir / "pushgateway.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Pushgateway:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.binary, f"--web.listen-address={self.host}:{self.port}", "--persistence.file=",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pushgateway exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pushgateway did not become ready on {self.url}: {self.log_tail()}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return response.read().decode()

    def families(self) -> dict:
        """name -> prometheus_client Metric, parsed from /metrics with prometheus_client.parser."""
        from prometheus_client.parser import text_string_to_metric_families

        return {family.name: family for family in text_string_to_metric_families(self.metrics_text())}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Pushgateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
