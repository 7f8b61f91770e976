"""latentmill.io.storage against a real S3 server (SeaweedFS, see tests/s3server.py)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from latentmill.io import storage
from latentmill.io.probes import check_writable
from latentmill.io.storage_errors import StorageError, StorageNotFoundError

try:
    from tests.s3server import free_port
except ImportError:  # pytest run without the repository root on sys.path
    from s3server import free_port

pytestmark = pytest.mark.slow


def _prefix() -> str:
    return f"s3://latentmill/test-storage/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """No AWS settings from the developer's environment or ~/.aws leak into a test."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_put_and_read_round_trip(s3):
    uri = storage.join(_prefix(), "sub", "obj.bin")
    fs, path = storage.resolve(uri, s3.storage_options())
    payload = bytes(range(256)) * 1000
    storage.put_bytes(fs, path, payload)
    assert storage.read_bytes(fs, path) == payload
    assert fs.exists(path)
    storage.put_bytes(fs, path, b"overwritten")
    assert storage.read_bytes(fs, path) == b"overwritten"
    with pytest.raises(StorageNotFoundError):
        storage.read_bytes(fs, path + ".missing")
    assert not fs.exists(path + ".missing")


def test_put_file_uploads_a_large_file_in_parts_as_one_object(s3, tmp_path):
    source = tmp_path / "00000.tar"
    source.write_bytes(bytes(range(256)) * (11 * 2**20 // 256))  # 11 MiB: three parts of 5 MiB
    uri = storage.join(_prefix(), "shards", "00000.tar")
    fs, path = storage.resolve(uri, s3.storage_options())
    storage.put_file(fs, str(source), path, part_size=5 * 2**20)
    assert storage.read_bytes(fs, path) == source.read_bytes()
    assert fs.info(path)["ContentType"] == "application/x-tar"
    assert "-" in fs.info(path)["ETag"]  # a multipart upload's ETag ends in -<parts>


def test_check_writable_with_right_credentials(s3):
    out = _prefix()
    check_writable(out, s3.storage_options())
    fs, path = storage.resolve(out, s3.storage_options())
    assert not [p for p in fs.find(path) if "_latentmill_probe" in p]  # the probe was deleted


def test_check_writable_wrong_secret(s3):
    wrong = "wrong-" + uuid.uuid4().hex
    opts = s3.storage_options() | {"secret": wrong}
    uri = _prefix()
    with pytest.raises(StorageError) as info:
        check_writable(uri, opts)
    msg = str(info.value)
    assert uri in msg
    assert "Access denied" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "storage.key" in msg
    assert wrong not in msg and s3.secret_key not in msg
    assert "SignatureDoesNotMatch" in msg or "signature" in msg.lower()


def test_check_writable_unknown_access_key(s3):
    opts = s3.storage_options() | {"key": "nobody", "secret": "x" * 20}
    with pytest.raises(StorageError, match="Access denied") as info:
        check_writable(_prefix(), opts)
    assert "x" * 20 not in str(info.value)


def test_check_writable_missing_bucket(s3):
    uri = "s3://no-such-bucket-" + uuid.uuid4().hex[:8] + "/out"
    with pytest.raises(StorageNotFoundError) as info:
        check_writable(uri, s3.storage_options())
    msg = str(info.value)
    assert uri in msg
    assert "does not exist" in msg and "Create the bucket" in msg
    assert s3.secret_key not in msg


def test_check_writable_unreachable_endpoint_fails_fast():
    endpoint = f"http://127.0.0.1:{free_port()}"
    opts = {"key": "k", "secret": "secret-value-xyz", "client_kwargs": {"endpoint_url": endpoint}}
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        check_writable("s3://latentmill/out", opts)
    elapsed = time.monotonic() - t0
    assert elapsed < 15, elapsed
    msg = str(info.value)
    assert "s3://latentmill/out" in msg
    assert endpoint in msg and "reachable" in msg
    assert "secret-value-xyz" not in msg


def test_aws_environment_variables_route(s3, monkeypatch, no_aws_env):
    """No storage options at all: key, secret and endpoint come from AWS_* variables."""
    import s3fs

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        uri = storage.join(_prefix(), "env.txt")
        check_writable(uri.rsplit("/", 1)[0], None)
        fs, path = storage.resolve(uri, None)
        storage.put_bytes(fs, path, b"via env")
        assert storage.read_bytes(fs, path) == b"via env"
        # Independent check with the server's own options.
        fs2, _ = storage.resolve(uri, s3.storage_options())
        assert fs2.cat_file(path) == b"via env"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_no_credentials_anywhere(s3, monkeypatch, no_aws_env):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StorageError, match="credentials") as info:
        check_writable(_prefix(), None)
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    s3fs.S3FileSystem.clear_instance_cache()


def test_put_bytes_survives_a_server_restart(s3):
    """Writes retried across a real outage: the server is down, then comes back (~4 s)."""
    # botocore's own retries off, so that put_bytes' retry loop is what rides out the outage.
    opts = s3.storage_options() | {"config_kwargs": {"retries": {"max_attempts": 1}}}
    fs, path = storage.resolve(storage.join(_prefix(), "restart.bin"), opts)
    storage.put_bytes(fs, path, b"before")  # a pooled connection to the old process

    s3.stop(kill=True)
    restarter = threading.Timer(0.5, s3.start)
    restarter.start()
    try:
        t0 = time.monotonic()
        storage.put_bytes(fs, path, b"after", retries=30, base_delay=0.2, max_delay=1.0)
        assert time.monotonic() - t0 > 0.5  # it really waited for the restart
    finally:
        restarter.join()
    assert s3.running
    assert storage.read_bytes(fs, path) == b"after"
