"""The S3 secret key never reaches a log line or an output file.

The test runs the CLI in a subprocess that starts its own Ray with RAY_TMPDIR in a folder of the
test's own, then greps stdout, stderr, every file of that Ray session (raylet, GCS, worker and
actor logs) and every object the job wrote for the secret. The credentials are in the job file's
storage section and in the AWS_* variables of the run's processes; the run also restarts the S3
server mid-run (issue 3, case (c)): the transient errors are retried and nothing is lost or doubled.

The same run shows that a run without an address starts a Ray of its own even when a Ray cluster runs on
the machine and Ray's address file (`<RAY_TMPDIR>/ray/ray_current_cluster`) names it: a plain
`ray.init(num_cpus=...)` would try to join that cluster and fail ("When connecting to an existing
cluster, num_cpus and num_gpus must not be provided"). The test session's Ray is that cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from latentmill.io import storage
from tests.helpers import write_table
from tests.integration.exactly_once import check_output, check_summary

pytestmark = pytest.mark.slow

POOLS = """
stages:
  encode: {batch_size: 4, num_cpus: 0.5, torch_threads: 1}
  denoise: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
  decode: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
"""


@pytest.fixture
def ray_tmpdir():
    """A short folder for the subprocess's Ray session (socket paths have a length limit)."""
    folder = tempfile.mkdtemp(prefix="lmray-", dir="/tmp")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def fresh_ray_env(ray_tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("RAY_ADDRESS",
                                                                                        "LATENTMILL_FAULTS")}
    env.update(RAY_TMPDIR=str(ray_tmpdir), **extra)
    return env


def run_cli(job: Path, env: dict[str, str], *args: str, verbose: bool = False) -> subprocess.Popen:
    flags = ["-v"] if verbose else []
    return subprocess.Popen([sys.executable, "-m", "latentmill.jobs.cli", *flags, "run", "--no-progress", "--config",
                             str(job), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def find_secret(secret: str, texts: dict[str, str], folders: list[Path], fs, prefix: str) -> list[str]:
    """Every place the secret appears: named texts, files under folders, objects under prefix."""
    needle = secret.encode()
    found = [name for name, text in texts.items() if secret in text]
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                try:
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    pass
    for key in fs.find(prefix):
        if needle in fs.cat_file(key):
            found.append(f"s3://{key}")
    return found


def assert_logs_were_captured(ray_tmpdir: Path) -> None:
    logs = list(ray_tmpdir.rglob("session_*/logs/*"))
    assert len(logs) > 10, logs
    workers = [p for p in logs if p.name.startswith("worker-") and p.suffix in (".out", ".err")]
    assert any(b"DenoiseWorker" in p.read_bytes() or b"denoise" in p.read_bytes() for p in workers), \
        "the actors' logs are not in the grepped folder"


def upload_table(s3, tmp_path, key: str, n: int) -> tuple[str, list[str]]:
    ids = [f"s-{i:02d}" for i in range(n)]
    local = write_table(tmp_path / "prompts.parquet", [{"id": i, "prompt": f"prompt {i}"} for i in ids] +
                        [{"id": "bad", "prompt": None}])
    fs, _ = storage.resolve("s3://", s3.storage_options())
    fs.put_file(str(local), f"latentmill/{key}")
    return f"s3://latentmill/{key}", ids


def name_the_running_cluster(ray_tmpdir: Path) -> str:
    """Write Ray's address file in the run's RAY_TMPDIR, naming the test session's Ray; returns its address."""
    import ray

    address = ray.get_runtime_context().gcs_address
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(address)
    return address


def test_credentials_appear_in_no_log_or_output_and_survive_an_s3_restart(s3, ray_local, tmp_path, ray_tmpdir):
    """One run checked for both: the credentials are in the job file's storage section (which the job
    uses) and in the AWS_* variables of every process of the run; a decode failure and a bad row make error
    rows and retry warnings (where a secret would leak first), the driver logs at debug level, and the S3
    server restarts mid-run. (s3fs taking the credentials from the AWS_* variables alone: test_faults.py's
    `environment` case, test_inspect_s3.py and test_s3_storage.py.) The address file names the test
    session's Ray, and the run starts a Ray of its own beside it."""
    n = 8
    table, ids = upload_table(s3, tmp_path, "secrets/in/job-file.parquet", n)
    job = tmp_path / "job.yaml"
    job.write_text(POOLS + f"""
storage:
  endpoint_url: {s3.endpoint_url}
  region: {s3.region}
  key: {s3.access_key}
  secret: {s3.secret_key}
""")
    out = "s3://latentmill/secrets/job-file"
    env = fresh_ray_env(ray_tmpdir, LATENTMILL_FAULTS="decode:raise:s-01;denoise:sleep:0.5", **s3.env())
    options = s3.storage_options()
    restarted: dict = {}

    def restart_after_first_object(driver: subprocess.Popen) -> None:
        watcher, _ = storage.resolve("s3://", dict(options, skip_instance_cache=True))
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                objects = watcher.find("latentmill/secrets/job-file/media")
            except FileNotFoundError:
                objects = []
            if objects:
                restarted["objects_before"] = len(objects)
                started = time.monotonic()
                s3.restart()  # SIGKILL, then start on the same ports and data
                restarted["seconds"] = time.monotonic() - started
                return
            time.sleep(0.2)

    name_the_running_cluster(ray_tmpdir)
    driver = run_cli(job, env, "--input", table, "--output", out, verbose=True)  # debug-level driver log
    thread = threading.Thread(target=restart_after_first_object, args=(driver,), daemon=True)
    thread.start()
    stdout, stderr = driver.communicate(timeout=600)
    thread.join(timeout=60)
    assert driver.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "Started a local Ray instance" in stderr  # not a join of the cluster the address file names
    assert restarted and restarted["objects_before"] < n - 1, restarted  # the restart was mid-run

    output = check_output(out, set(ids) - {"s-01"}, {"bad", "s-01"}, storage_options=options)
    check_summary(output.summary, rows=n + 1, outputs=n - 1, failed=2)
    fs, _ = storage.resolve("s3://", options)
    assert_logs_were_captured(ray_tmpdir)
    assert s3.secret_key in job.read_text()  # the grep would see it where it is
    assert find_secret(s3.secret_key, {"stdout": stdout, "stderr": stderr}, [ray_tmpdir], fs,
                       "latentmill/secrets/job-file") == []
    assert "**********" in fs.cat_file("latentmill/secrets/job-file/summary.json").decode()  # masked, not left out
