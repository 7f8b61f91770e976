"""A real two-node (or more) Ray cluster on this machine for tests: ``ray start`` processes we own.

Every node is a ``ray start --block`` process in its own session, started with a marker variable in
its environment that all of Ray's daemons and workers inherit. ``stop()`` ends exactly the processes
that carry our marker, never anyone else's: ``ray stop`` would kill every Ray process of this user on
the machine (other test runs, other people's sessions), so it is never used here.

Usage::

    with LocalRayCluster(tmp_path) as cluster:
        cluster.start_head(num_cpus=2, resources={"small_gpu": 2}, num_gpus=1)
        cluster.add_node(num_cpus=2, num_gpus=1, resources={"large_gpu": 1})
        cluster.wait_for_nodes(2)
        subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url, ...],
                       env=cluster.env())
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from tests.s3server import free_ports
except ImportError:  # pytest run without the repository root on sys.path
    from s3server import free_ports

MARKER = "LATENTMILL_TEST_RAY_CLUSTER"


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    ports: dict[str, int]
    log_path: Path
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics_export']}/metrics"


class LocalRayCluster:
    """Head plus worker nodes from ``ray start``, on loopback, with token auth and our own token."""

    host = "127.0.0.1"

    def __init__(self, work_dir: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None,
                 start_timeout: float = 120.0) -> None:
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="lm-ray-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Ray's Unix socket paths must stay under ~107 bytes: a short temp dir of our own.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lmray-", dir="/tmp"))
        self.marker = secrets.token_hex(8)
        self.token = secrets.token_hex(32)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.nodes: list[RayNode] = []
        self.gcs_port: int | None = None
        self.dashboard_port: int | None = None
        self._used_ports: set[int] = set()

    # ---------------------------------------------------------------- public API

    @property
    def address(self) -> str:
        return f"{self.host}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment for the nodes and for clients (``ray job submit``, ``ray.init``)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env[MARKER] = self.marker
        # Token auth on, with a token of this cluster's own (never ~/.ray/auth_token).
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def start_head(self, *, num_cpus: float = 2, num_gpus: int = 0, resources: dict[str, float] | None = None,
                   ) -> RayNode:
        self.gcs_port, self.dashboard_port, client_port = self._ports(3)
        extra = [
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={self.host}",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client_port}",
        ]
        node = self._start("head", extra, num_cpus, num_gpus, resources or {})
        self._wait(lambda: self._dashboard_up(), f"Ray dashboard on {self.dashboard_url}", node)
        return node

    def add_node(self, *, num_cpus: float = 2, num_gpus: int = 0, resources: dict[str, float] | None = None,
                 ) -> RayNode:
        if self.gcs_port is None:
            raise RuntimeError("start_head() first")
        return self._start(f"worker{len(self.nodes)}", [f"--address={self.address}"], num_cpus, num_gpus,
                           resources or {})

    def wait_for_nodes(self, count: int) -> None:
        self._wait(lambda: self.alive_nodes() >= count, f"{count} Ray nodes alive", self.nodes[-1])

    def alive_nodes(self) -> int:
        nodes = self.api("/api/v0/nodes?limit=100")
        if not nodes:
            return 0
        return sum(1 for node in nodes["data"]["result"]["result"] if node.get("state") == "ALIVE")

    def api(self, path: str) -> dict[str, Any] | None:
        """GET a dashboard API path with our token; None while the dashboard cannot answer."""
        request = urllib.request.Request(self.dashboard_url + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def ray(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI of this virtualenv against this cluster."""
        ray_bin = str(Path(sys.executable).parent / "ray")
        return subprocess.run([ray_bin, *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def stop(self) -> None:
        """End every process that carries this cluster's marker (and only those)."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                _signal_group(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # ray start --block stops its daemons on SIGTERM; then SIGKILL
        while time.monotonic() < deadline and self._marked_pids():
            time.sleep(0.3)
        for pid in self._marked_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for node in self.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        parts = []
        for node in self.nodes:
            try:
                lines = node.log_path.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                lines = ["(no log)"]
            parts.append(f"--- {node.name} ({node.log_path})\n" + "\n".join(lines))
        return "\n".join(parts)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---------------------------------------------------------------- internals

    def _ports(self, n: int) -> list[int]:
        """Free ports never handed out before in this cluster: a port released after one draw can come
        back in the next, and two Ray components on one port stop `ray start`."""
        while True:
            ports = free_ports(n)
            if not self._used_ports.intersection(ports):
                self._used_ports.update(ports)
                return ports

    def _start(self, name: str, extra: list[str], num_cpus: float, num_gpus: int,
               resources: dict[str, float]) -> RayNode:
        names = ("metrics_export", "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent",
                 "node_manager", "object_manager")
        ports = dict(zip(names, self._ports(len(names))))
        if "--head" in extra:
            ports["gcs"] = self.gcs_port
            ports["dashboard"] = self.dashboard_port
        command = [
            str(Path(sys.executable).parent / "ray"), "start", "--block", *extra,
            f"--node-ip-address={self.host}",
            f"--num-cpus={num_cpus:g}",
            f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(resources)}",
            f"--temp-dir={self.temp_dir}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            "--disable-usage-stats",
        ]
        log_path = self.work_dir / f"ray-{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.work_dir, start_new_session=True)
        node = RayNode(name, proc, ports, log_path, dict(resources))
        self.nodes.append(node)
        return node

    def _dashboard_up(self) -> bool:
        return self.api("/api/version") is not None

    def _wait(self, ready, what: str, node: RayNode) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start ({node.name}) exited with {node.proc.returncode}\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}\n{self.log_tail()}")

    def _marked_pids(self) -> list[int]:
        needle = f"{MARKER}={self.marker}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # pgid == pid thanks to start_new_session
    except (ProcessLookupError, PermissionError):
        pass
