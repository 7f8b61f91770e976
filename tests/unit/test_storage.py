"""latentmill.io.storage without a server: keys, URIs, local atomic writes, retry policy."""

from __future__ import annotations

import errno
import os
import random
import re
import string

import pytest

from latentmill.io import storage, storage_errors
from latentmill.io.probes import check_writable
from latentmill.io.storage_errors import StorageError, StorageNotFoundError, display_uri

SAFE_RE = re.compile(r"[A-Za-z0-9._-]+")
SECRET = "sUp3r-s3cret-v4lue-do-not-print"


def assert_safe(key: str) -> None:
    assert SAFE_RE.fullmatch(key), key
    assert not key.startswith(".")
    assert key not in (".", "..")
    assert "/" not in key
    assert 1 <= len(key) <= storage.SAFE_KEY_MAX_LEN


# ------------------------------------------------------------------------------ safe_key


@pytest.mark.parametrize(
    "row_id",
    ["abc", "row-0001", "A.B_C-d", "0", "x" * 100, "img_42.v2", "a..b", "-lead", "_x"],
)
def test_safe_key_is_identity_for_safe_ids(row_id):
    assert storage.safe_key(row_id) == row_id
    assert storage.safe_key(storage.safe_key(row_id)) == row_id


@pytest.mark.parametrize(
    "row_id",
    [
        "a/b",
        "/",
        "//",
        ".",
        "..",
        "../..",
        "../../etc/passwd",
        ".hidden",
        "has space",
        " ",
        "tab\there",
        "new\nline",
        "x" * 1000,
        "y" * 101,
        "日本語のプロンプト",
        "emoji 😀🚀",
        "😀",
        "a\\b",
        "a:b?c*d<e>f|g\"h'",
        "\x00nul",
        "%2F..%2F",
        "é" * 200,
    ],
)
def test_safe_key_sanitises_unsafe_ids(row_id):
    key = storage.safe_key(row_id)
    assert_safe(key)
    assert key != row_id
    assert re.search(r"-[0-9a-f]{12}$", key)


def test_safe_key_long_id_keeps_a_readable_prefix():
    key = storage.safe_key("prompt " + "z" * 500)
    assert key.startswith("prompt_zzz")
    assert len(key) == storage.SAFE_KEY_MAX_LEN


def test_safe_key_reserved_suffix_is_hashed_to_avoid_collisions():
    # "a b" maps to "a_b-<hash>"; the literal id "a_b-<hash>" must map elsewhere.
    hashed = storage.safe_key("a b")
    assert storage.safe_key(hashed) != hashed
    assert storage.safe_key(hashed) != storage.safe_key("a b")
    assert_safe(storage.safe_key(hashed))
    # Only lowercase-hex 12-digit suffixes are reserved.
    assert storage.safe_key("a-0123456789AB") == "a-0123456789AB"
    assert storage.safe_key("a-0123456789a") == "a-0123456789a"


def test_safe_key_distinct_ids_give_distinct_keys():
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + "._-/ :\\" + "éü日😀"
    ids: set[str] = set()
    # Random ids over an alphabet with many unsafe characters.
    while len(ids) < 3000:
        ids.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    # Near-collisions: same sanitised form, different original.
    for i in range(200):
        for sep in ("_", " ", "/", ":", "\t", "__", "  ", "é", "😀"):
            ids.add(f"row{sep}{i}")
    # Long ids sharing a prefix much longer than the key length.
    prefix = "p" * 150
    ids.update(f"{prefix}{i}" for i in range(500))
    # Ids that look like hashed keys of other ids.
    ids.update(storage.safe_key(x) for x in list(ids)[:500])
    ids.update(["a", "A", ".a", "_a", "..a", "a.", "a..", "a-", "-a"])

    keys = {}
    for row_id in ids:
        key = storage.safe_key(row_id)
        assert_safe(key)
        assert key not in keys, f"{row_id!r} and {keys[key]!r} both map to {key!r}"
        keys[key] = row_id
    assert len(keys) == len(ids)


def test_safe_key_is_deterministic():
    assert storage.safe_key("some id/with slash") == storage.safe_key("some id/with slash")


def test_safe_key_rejects_bad_input():
    with pytest.raises(ValueError):
        storage.safe_key("")
    with pytest.raises(TypeError):
        storage.safe_key(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        storage.safe_key(True)  # type: ignore[arg-type]
    assert storage.safe_key(42) == "42"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ join / resolve


@pytest.mark.parametrize(
    "base, parts, expected",
    [
        ("s3://bucket", ("a", "b.png"), "s3://bucket/a/b.png"),
        ("s3://bucket/", ("/a/", "/b.png"), "s3://bucket/a/b.png"),
        ("s3://bucket/out//x/", ("y//z",), "s3://bucket/out/x/y/z"),
        ("s3://bucket/out", (), "s3://bucket/out"),
        ("s3://bucket/out", ("", "a"), "s3://bucket/out/a"),
        ("file:///tmp/out", ("a",), "file:///tmp/out/a"),
        ("/tmp/out/", ("a", "b"), "/tmp/out/a/b"),
        ("relative/dir", ("a",), "relative/dir/a"),
        ("gs://b/p", ("q",), "gs://b/p/q"),
        ("/", ("a",), "/a"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


def test_join_rejects_bad_input():
    with pytest.raises(ValueError):
        storage.join("")
    with pytest.raises(TypeError):
        storage.join("s3://b", 3)  # type: ignore[arg-type]


def test_resolve_local_and_file_uri(tmp_path):
    fs, path = storage.resolve(str(tmp_path / "x"))
    assert path == str(tmp_path / "x")
    fs2, path2 = storage.resolve(f"file://{tmp_path}/x", {})
    assert path2 == path
    assert "file" in fs2.protocol


def test_resolve_s3_without_network():
    fs, path = storage.resolve("s3://bucket/prefix/key", {"key": "k", "secret": "s"})
    assert path == "bucket/prefix/key"
    assert display_uri(fs, path) == "s3://bucket/prefix/key"


def test_resolve_unknown_protocol():
    with pytest.raises(StorageError, match="nosuchproto"):
        storage.resolve("nosuchproto://x/y")


# ------------------------------------------------------------------------------ local writes


def _leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp") or n.startswith(".")]


def test_put_bytes_local_creates_parents_and_leaves_no_temp_files(tmp_path):
    fs, base = storage.resolve(str(tmp_path / "out"))
    target = storage.join(base, "deep", "er", "obj.bin")
    storage.put_bytes(fs, target, b"first")
    storage.put_bytes(fs, target, b"second")
    assert storage.read_bytes(fs, target) == b"second"
    assert _leftovers(tmp_path / "out" / "deep" / "er") == []
    mode = os.stat(target).st_mode & 0o777
    assert mode & 0o044, oct(mode)  # not the 0600 of mkstemp


def test_put_file_local_copies_through_a_temporary_sibling(tmp_path):
    source = tmp_path / "source.tar"
    source.write_bytes(os.urandom(3 * 2**20))
    fs, base = storage.resolve(str(tmp_path / "out"))
    target = storage.join(base, "shards", "00000.tar")
    storage.put_file(fs, str(source), target)
    assert storage.read_bytes(fs, target) == source.read_bytes()
    assert _leftovers(tmp_path / "out" / "shards") == []
    assert os.stat(target).st_mode & 0o044


def test_put_bytes_local_file_uri(tmp_path):
    fs, path = storage.resolve(f"file://{tmp_path}/a/b.txt")
    storage.put_bytes(fs, path, b"x")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"x"


def test_put_bytes_local_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    fs, base = storage.resolve(str(tmp_path))
    target = storage.join(base, "obj.bin")

    def boom(fd):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(storage.os, "fsync", boom)
    with pytest.raises(StorageError, match="obj.bin"):
        storage.put_bytes(fs, target, b"x" * 100_000, base_delay=0)
    assert not os.path.exists(target)
    assert _leftovers(tmp_path) == []


def test_put_bytes_local_failure_keeps_previous_version(tmp_path, monkeypatch):
    fs, base = storage.resolve(str(tmp_path))
    target = storage.join(base, "obj.bin")
    storage.put_bytes(fs, target, b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.put_bytes(fs, target, b"new" * 1000)
    monkeypatch.undo()
    assert (tmp_path / "obj.bin").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_put_bytes_rejects_non_bytes(tmp_path):
    fs, base = storage.resolve(str(tmp_path))
    with pytest.raises(TypeError):
        storage.put_bytes(fs, base + "/x", "text")  # type: ignore[arg-type]


def test_read_bytes_missing_local(tmp_path):
    fs, base = storage.resolve(str(tmp_path))
    with pytest.raises(StorageNotFoundError) as info:
        storage.read_bytes(fs, base + "/nope")
    assert isinstance(info.value, FileNotFoundError)
    assert "nope" in str(info.value)


# ------------------------------------------------------------------------------ checks (local)


def test_check_writable_local(tmp_path):
    check_writable(str(tmp_path / "new" / "out"))
    assert os.listdir(tmp_path) == []  # probe removed, and the folders it needed too
    (tmp_path / "kept").mkdir()
    check_writable(str(tmp_path / "kept"))
    assert os.listdir(tmp_path / "kept") == []  # a folder that was there stays


def test_check_writable_local_under_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError) as info:
        check_writable(str(tmp_path / "file" / "out"))
    assert "not writable" in str(info.value)
    assert str(tmp_path / "file" / "out") in str(info.value)


# ------------------------------------------------------------------------------ retry policy


def _client_error(code: str, status: int, op: str = "PutObject", message: str | None = None):
    """What s3fs raises for an S3 error response: botocore ClientError translated by s3fs."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    err = ClientError(
        {
            "Error": {"Code": code, "Message": message or code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )
    return translate_boto_error(err)


def _endpoint_error():
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/key")


class FakeObjectStore:
    """A test double for a remote filesystem whose first ``fail_times`` calls raise ``error``."""

    protocol = ("s3", "s3a")

    def __init__(self, error_factory=None, fail_times: int = 0):
        self.error_factory = error_factory
        self.fail_times = fail_times
        self.calls = 0
        self.objects: dict[str, bytes] = {}
        self.storage_options = {"key": "AKIDEXAMPLE", "secret": SECRET}
        self.client_kwargs = {"endpoint_url": "http://storage.example:9000"}

    def _maybe_fail(self):
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error_factory()

    def pipe_file(self, path, data, **kwargs):
        self._maybe_fail()
        self.objects[path] = data
        self.put_options = kwargs

    def cat_file(self, path):
        self._maybe_fail()
        return self.objects[path]

    def unstrip_protocol(self, path):
        return "s3://" + path


TRANSIENT_ERRORS = {
    "connection reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "connection refused": lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    "timeout": lambda: TimeoutError("timed out"),
    "endpoint": _endpoint_error,
    "500": lambda: _client_error("InternalError", 500),
    "502": lambda: _client_error("502", 502),
    "503 SlowDown": lambda: _client_error(
        "SlowDown", 503, message="Please reduce your request rate."
    ),
    "504": lambda: _client_error("504", 504),
    "RequestTimeout": lambda: _client_error("RequestTimeout", 400),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT_ERRORS))
def test_put_bytes_retries_transient_errors(name):
    fs = FakeObjectStore(TRANSIENT_ERRORS[name], fail_times=3)
    storage.put_bytes(fs, "bucket/key", b"data", retries=5, base_delay=0.001)
    assert fs.calls == 4
    assert fs.objects == {"bucket/key": b"data"}


def test_read_bytes_retries_transient_errors():
    fs = FakeObjectStore(TRANSIENT_ERRORS["connection reset"], fail_times=0)
    fs.objects["bucket/key"] = b"v"
    fs.fail_times = 2
    assert storage.read_bytes(fs, "bucket/key", base_delay=0.001) == b"v"
    assert fs.calls == 3


def test_put_bytes_gives_up_after_retries():
    fs = FakeObjectStore(TRANSIENT_ERRORS["endpoint"], fail_times=100)
    with pytest.raises(StorageError) as info:
        storage.put_bytes(fs, "bucket/key", b"data", retries=2, base_delay=0.001)
    assert fs.calls == 3
    msg = str(info.value)
    assert "s3://bucket/key" in msg
    assert "3 attempt" in msg
    assert "http://storage.example:9000" in msg  # which endpoint to check
    assert not fs.objects


def test_backoff_is_exponential_with_full_jitter(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(storage_errors.time, "sleep", sleeps.append)
    monkeypatch.setattr(storage_errors.random, "uniform", lambda lo, hi: hi)  # the cap of each draw
    fs = FakeObjectStore(TRANSIENT_ERRORS["503 SlowDown"], fail_times=100)
    with pytest.raises(StorageError):
        storage.put_bytes(fs, "b/k", b"d", retries=6, base_delay=0.5, max_delay=4.0)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


AUTH_ERRORS = {
    "AccessDenied": lambda: _client_error("AccessDenied", 403, message="Access Denied"),
    "InvalidAccessKeyId": lambda: _client_error("InvalidAccessKeyId", 403),
    "SignatureDoesNotMatch": lambda: _client_error(
        "SignatureDoesNotMatch", 403, message=f"signature mismatch for {SECRET}"
    ),
    "403 on HEAD": lambda: _client_error("403", 403, op="HeadObject", message="Forbidden"),
    "PermissionError": lambda: PermissionError(f"denied (secret was {SECRET})"),
}


@pytest.mark.parametrize("name", sorted(AUTH_ERRORS))
def test_auth_errors_are_not_retried(name):
    fs = FakeObjectStore(AUTH_ERRORS[name], fail_times=100)
    with pytest.raises(StorageError) as info:
        storage.put_bytes(fs, "bucket/key", b"data", retries=5, base_delay=0.001)
    assert fs.calls == 1
    msg = str(info.value)
    assert "Access denied" in msg
    assert "s3://bucket/key" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "storage.key" in msg
    assert SECRET not in msg


def test_missing_credentials_message():
    from botocore.exceptions import NoCredentialsError

    fs = FakeObjectStore(NoCredentialsError, fail_times=100)
    with pytest.raises(StorageError, match="No usable credentials") as info:
        storage.put_bytes(fs, "bucket/key", b"data")
    assert fs.calls == 1
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_missing_bucket_is_not_retried():
    fs = FakeObjectStore(
        lambda: _client_error("NoSuchBucket", 404, message="The specified bucket does not exist"),
        fail_times=100,
    )
    with pytest.raises(StorageNotFoundError) as info:
        storage.put_bytes(fs, "nobucket/key", b"data")
    assert fs.calls == 1
    assert "'nobucket'" in str(info.value) and "Create the bucket" in str(info.value)


def test_secret_from_environment_is_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-0123456789")
    fs = FakeObjectStore(lambda: PermissionError("bad env-secret-0123456789"), fail_times=1)
    with pytest.raises(StorageError) as info:
        storage.put_bytes(fs, "b/k", b"d")
    assert "env-secret-0123456789" not in str(info.value)


def test_programming_errors_propagate_unchanged():
    fs = FakeObjectStore(lambda: TypeError("bug"), fail_times=100)
    with pytest.raises(TypeError, match="bug"):
        storage.put_bytes(fs, "b/k", b"d", base_delay=0.001)
    assert fs.calls == 1


def test_negative_retries_rejected():
    with pytest.raises(ValueError):
        storage.put_bytes(FakeObjectStore(), "b/k", b"d", retries=-1)


def test_module_is_a_cheap_leaf():
    import subprocess
    import sys

    code = (
        "import sys, latentmill.io.storage, latentmill.io.media; "
        "heavy = [m for m in ('ray', 'torch', 's3fs', 'botocore', 'av', 'PIL', 'diffusers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
