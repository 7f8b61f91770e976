"""Object-storage helpers: URI resolution, safe keys, atomic writes with retries, early checks.

Everything goes through fsspec, so local paths, ``file://`` URIs and ``s3://`` URIs (s3fs)
work the same way; other fsspec protocols work where their filesystem is installed.

Credentials and endpoint for S3
-------------------------------
``storage_options`` is the plain dict of fsspec/s3fs options, e.g.::

    {"key": "...", "secret": "...", "client_kwargs": {"endpoint_url": "http://host:8333"}}

When no key/secret is given, s3fs (through botocore) uses the standard AWS sources:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
the shared config files, or an instance role. The endpoint of an S3-compatible store (MinIO,
SeaweedFS, Ceph, R2, ...) can likewise come from ``AWS_ENDPOINT_URL`` (or the S3-specific
``AWS_ENDPOINT_URL_S3``): botocore >= 1.31 reads it, and s3fs passes no endpoint of its own
when none is configured, so the variable takes effect (covered by the integration tests).

This module is a leaf: it imports neither ray nor torch, and imports s3fs/botocore lazily.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import fsspec

__all__ = [
    "StorageError",
    "StorageNotFoundError",
    "resolve",
    "join",
    "safe_key",
    "put_bytes",
    "read_bytes",
    "content_type",
    "check_writable",
    "display_uri",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(Exception):
    """A storage operation failed in a way the user has to fix (or that kept failing).

    The message says what failed, where (the URI) and what to do. It never contains secrets.
    `fatal` is set when retrying other rows cannot help (credentials, permissions, missing bucket),
    so a job stops instead of turning every row into an error row.
    """

    fatal: bool = False


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, path or bucket does not exist. Also a ``FileNotFoundError``."""


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def resolve(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a URI or local path (``fsspec.core.url_to_fs``).

    ``path`` is what the filesystem's methods take: ``bucket/key`` for s3, an absolute path for
    local files. ``storage_options`` are passed to the filesystem constructor.
    """
    import fsspec.core

    if not isinstance(uri, str) or not uri:
        raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
    try:
        return fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        # e.g. "gs://" without gcsfs installed, or an unknown protocol.
        msg = (
            f"Cannot open storage URI {uri!r}: {exc}. Use a local path, file://, or s3:// "
            "(other fsspec protocols need their package installed, e.g. gcsfs for gs://)."
        )
        raise StorageError(_redact(msg, storage_options=storage_options)) from exc


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)


def join(base_uri: str, *parts: str) -> str:
    """Join URI/path components with single slashes, keeping the scheme (``s3://``, ``file://``).

    >>> join("s3://bucket/out/", "/images", "a.png")
    's3://bucket/out/images/a.png'
    >>> join("/tmp/out", "x//y")
    '/tmp/out/x/y'
    """
    if not isinstance(base_uri, str) or not base_uri:
        raise ValueError(f"base URI must be a non-empty string, got {base_uri!r}")
    m = _SCHEME_RE.match(base_uri)
    scheme, rest = (m.group(1), m.group(2)) if m else (None, base_uri)
    leading = "/" if rest.startswith("/") else ""
    segments = [s for s in rest.split("/") if s]
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"path parts must be strings, got {part!r}")
        segments.extend(s for s in part.split("/") if s)
    path = leading + "/".join(segments)
    return f"{scheme}://{path}" if scheme is not None else (path or "/")


def display_uri(fs: Any, path: str) -> str:
    """A URI for messages: ``s3://bucket/key`` or the local path."""
    if _is_local(fs):
        return path
    try:
        return fs.unstrip_protocol(path)
    except Exception:  # pragma: no cover - exotic filesystems
        return path


# --------------------------------------------------------------------------------------------
# Safe keys
# --------------------------------------------------------------------------------------------

SAFE_KEY_MAX_LEN = 100
_HASH_LEN = 12
_UNSAFE_RUN_RE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_RE = re.compile(r"[A-Za-z0-9._-]+")
# A safe id that already ends like a hashed key is hashed too; otherwise the id
# "a_b-<sha of 'a b'>" would collide with the key of "a b".
_RESERVED_SUFFIX_RE = re.compile(r"-[0-9a-f]{12}$")


def safe_key(row_id: str) -> str:
    """Map an arbitrary row id to a safe object-key component.

    The result only uses ``[A-Za-z0-9._-]``, never starts with a dot (so never ``.``/``..``),
    never contains ``/`` and is at most 100 characters. An id that is already safe (and does not
    end in ``-`` + 12 lowercase hex digits, the pattern reserved for hashed keys) maps to itself.
    Any other id is sanitised (runs of other characters become ``_``, leading dots become ``_``),
    truncated to 87 characters and suffixed with ``-`` + the first 12 hex digits of
    ``sha256(id)``, so distinct ids give distinct keys.

    Raises ``ValueError`` for an empty id and ``TypeError`` for a non-string (ints are accepted
    and stringified).
    """
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        raise TypeError(f"row id must be a string, got {type(row_id).__name__}: {row_id!r}")
    row_id = str(row_id)
    if not row_id:
        raise ValueError("row id must not be empty")
    if (
        len(row_id) <= SAFE_KEY_MAX_LEN
        and _SAFE_RE.fullmatch(row_id)
        and not row_id.startswith(".")
        and not _RESERVED_SUFFIX_RE.search(row_id)
    ):
        return row_id
    base = _UNSAFE_RUN_RE.sub("_", row_id)
    stripped = base.lstrip(".")
    base = "_" * (len(base) != len(stripped)) + stripped
    base = base[: SAFE_KEY_MAX_LEN - _HASH_LEN - 1]
    digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    return f"{base}-{digest}"


# --------------------------------------------------------------------------------------------
# Error classification
# --------------------------------------------------------------------------------------------

_AUTH_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "RequestTimeTooSkewed",
    "NotSignedUp",
    "AuthorizationHeaderMalformed",
    "UnrecognizedClientException",
    "403",
    "401",
}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchVersion"}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "500",
    "502",
    "503",
    "504",
}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EBUSY,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    getattr(errno, "EREMOTEIO", errno.EIO),
}
# Exception class names (anywhere in the MRO) from botocore / aiohttp / fsspec that signal a
# network problem worth retrying. Matched by name so that this module imports neither.
_TRANSIENT_CLASS_NAMES = {
    "EndpointConnectionError",  # botocore: connection refused / DNS failure
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "HTTPClientError",
    "ResponseParserError",
    "IncompleteReadError",
    "ProxyConnectionError",
    "ClientConnectionError",  # aiohttp
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ClientPayloadError",
    "ClientOSError",
    "FSTimeoutError",  # fsspec sync() timeout
    "IncompleteRead",
}
_CREDENTIALS_CLASS_NAMES = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
}
_TRANSIENT_MESSAGES = (
    "slowdown",
    "slow down",
    "reduce your request rate",
    "service unavailable",
    "internal error",
    "internalerror",
    "connection reset",
    "connection refused",
    "connection aborted",
    "server disconnected",
    "timed out",
    "timeout",
    "temporarily unavailable",
    "bad gateway",
    "gateway timeout",
)

# Kinds, strongest first.
_AUTH, _CREDENTIALS, _MISSING_BUCKET, _NOT_FOUND, _TRANSIENT, _OTHER = (
    "auth",
    "credentials",
    "missing_bucket",
    "not_found",
    "transient",
    "other",
)
_PRIORITY = [_CREDENTIALS, _AUTH, _MISSING_BUCKET, _NOT_FOUND, _TRANSIENT]


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    todo = [exc]
    while todo and len(out) < 16:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        sub = getattr(e, "exceptions", None)  # ExceptionGroup (3.11+)
        if isinstance(sub, (list, tuple)):
            todo.extend(x for x in sub if isinstance(x, BaseException))
    return out


def _mro_names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _response(e: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore ClientError-like exception."""
    resp = getattr(e, "response", None)
    if not isinstance(resp, dict):
        return None, None
    code = (resp.get("Error") or {}).get("Code")
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), (int(status) if status else None)


def _kind_of_one(e: BaseException) -> str:
    names = _mro_names(e)
    if names & _CREDENTIALS_CLASS_NAMES:
        return _CREDENTIALS
    code, status = _response(e)
    if code is not None or status is not None:
        if code in _AUTH_CODES or status in (401, 403):
            return _AUTH
        if code in _MISSING_BUCKET_CODES:
            return _MISSING_BUCKET
        if code in _NOT_FOUND_CODES or status == 404:
            return _NOT_FOUND
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return _TRANSIENT
    if isinstance(e, PermissionError):
        return _AUTH
    if isinstance(e, FileNotFoundError):
        return _NOT_FOUND
    msg = str(e)
    if "NoSuchBucket" in msg or "bucket does not exist" in msg.lower():
        return _MISSING_BUCKET
    if isinstance(e, (ConnectionError, TimeoutError)) or names & _TRANSIENT_CLASS_NAMES:
        if "CERTIFICATE_VERIFY_FAILED" in msg:
            return _OTHER  # a TLS configuration problem, retrying will not help
        return _TRANSIENT
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return _TRANSIENT
    low = msg.lower()
    if any(s in low for s in _TRANSIENT_MESSAGES):
        return _TRANSIENT
    return _OTHER


def _classify(exc: BaseException) -> str:
    kinds = {_kind_of_one(e) for e in _chain(exc)}
    for k in _PRIORITY:
        if k in kinds:
            return k
    return _OTHER


def _is_storage_exception(exc: BaseException) -> bool:
    """Exceptions we translate into StorageError (others, e.g. TypeError, propagate as-is)."""
    if isinstance(exc, OSError):
        return True
    for e in _chain(exc):
        mod = type(e).__module__ or ""
        if mod.split(".")[0] in (
            "botocore",
            "aiobotocore",
            "aiohttp",
            "s3fs",
            "fsspec",
            "urllib3",
            "asyncio",
        ):
            return True
        if _response(e) != (None, None):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Messages (never containing secrets)
# --------------------------------------------------------------------------------------------

_SECRET_OPTION_KEYS = {
    "secret",
    "password",
    "token",
    "session_token",
    "aws_secret_access_key",
    "aws_session_token",
    "secret_key",
    "sas_token",
    "account_key",
}
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _secrets_of(options: Any) -> list[str]:
    out: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if isinstance(v, str) and str(k).lower() in _SECRET_OPTION_KEYS:
                    out.append(v)
                else:
                    walk(v)

    walk(options)
    out.extend(os.environ[v] for v in _SECRET_ENV_VARS if os.environ.get(v))
    return [s for s in out if len(s) >= 4]


def _redact(text: str, fs: Any = None, storage_options: Any = None) -> str:
    secrets = _secrets_of(storage_options)
    if fs is not None:
        secrets += _secrets_of(getattr(fs, "storage_options", None))
        for attr in ("secret", "token", "password"):
            v = getattr(fs, attr, None)
            if isinstance(v, str) and len(v) >= 4:
                secrets.append(v)
    for s in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _is_local(fs: Any) -> bool:
    proto = getattr(fs, "protocol", ())
    protos = (proto,) if isinstance(proto, str) else tuple(proto)
    return "file" in protos or "local" in protos


def _endpoint_of(fs: Any) -> str | None:
    for src in (getattr(fs, "client_kwargs", None), getattr(fs, "storage_options", None)):
        if isinstance(src, dict):
            ep = src.get("endpoint_url") or (src.get("client_kwargs") or {}).get("endpoint_url")
            if ep:
                return str(ep)
    ep = getattr(fs, "endpoint_url", None)
    if ep:
        return str(ep)
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _detail(exc: BaseException) -> str:
    # The most informative text: a ClientError's message if there is one, else the outermost.
    for e in _chain(exc):
        code, status = _response(e)
        if code or status:
            return f"{type(e).__name__}: {e}"
    return f"{type(exc).__name__}: {exc}"


def _bucket_of(fs: Any, path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def _error_for(
    kind: str,
    exc: BaseException,
    *,
    action: str,
    fs: Any,
    path: str,
    attempts: int,
    storage_options: Any = None,
) -> StorageError:
    where = display_uri(fs, path)
    detail = _detail(exc)
    local = _is_local(fs)
    if kind == _CREDENTIALS:
        msg = (
            f"No usable credentials for {action} {where} ({detail}). Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or storage.key/"
            "storage.secret in the job file; for a public bucket set storage.anon: true."
        )
        err: StorageError = StorageError(msg)
    elif kind == _AUTH and local:
        err = StorageError(
            f"Permission denied {action} {where} ({detail}). Check the directory's owner and "
            "permissions, or choose a location this user can write to."
        )
    elif kind == _AUTH:
        err = StorageError(
            f"Access denied {action} {where} ({detail}). Check the credentials: "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment or storage.key/"
            "storage.secret in the job file, and that they are allowed to access bucket "
            f"{_bucket_of(fs, path)!r}."
        )
    elif kind == _MISSING_BUCKET:
        bucket = _bucket_of(fs, path)
        err = StorageNotFoundError(
            f"Bucket {bucket!r} does not exist ({action} {where}; {detail}). Create the bucket "
            f"(e.g. `aws s3 mb s3://{bucket}`) or fix the URI in the job file."
        )
    elif kind == _NOT_FOUND and action == "writing" and not local:
        ep = _endpoint_of(fs)
        err = StorageNotFoundError(
            f"Got 'not found' writing {where} ({detail}). The bucket "
            f"{_bucket_of(fs, path)!r} probably does not exist (create it), or the endpoint "
            f"{ep or '(default AWS S3)'} is not an S3 service (check storage.endpoint_url / "
            "AWS_ENDPOINT_URL)."
        )
    elif kind == _NOT_FOUND:
        err = StorageNotFoundError(f"Not found: {where} ({action}; {detail}).")
    elif kind == _TRANSIENT:
        if local:
            hint = "Check the disk or network filesystem."
        else:
            ep = _endpoint_of(fs)
            hint = (
                f"Is the storage endpoint {ep or '(default AWS S3)'} up and reachable? "
                "Check storage.endpoint_url / AWS_ENDPOINT_URL and the network."
            )
        err = StorageError(
            f"Storage unavailable while {action} {where}: gave up after {attempts} attempt(s) "
            f"({detail}). {hint}"
        )
    elif local and isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        err = StorageError(f"No space left on device while {action} {where}. Free some space.")
    else:
        err = StorageError(f"Storage error while {action} {where} ({detail}).")
    err.args = (_redact(str(err.args[0]), fs, storage_options),)
    err.fatal = kind in (_CREDENTIALS, _AUTH, _MISSING_BUCKET) or (kind == _NOT_FOUND and action == "writing")
    return err


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def _retry(
    fn: Callable[[], T],
    *,
    action: str,
    fs: Any,
    path: str,
    retries: int,
    base_delay: float,
    max_delay: float,
    storage_options: Any = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn`` with up to ``retries`` retries on transient errors.

    Backoff is exponential with full jitter: ``uniform(0, min(max_delay, base_delay * 2**n))``.
    Non-transient storage errors become ``StorageError`` at once; non-storage exceptions
    (programming errors) propagate unchanged.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, StorageError) or not _is_storage_exception(exc):
                raise
            kind = _classify(exc)
            attempt += 1
            if kind == _TRANSIENT and attempt <= retries:
                delay = random.uniform(0.0, min(max_delay, base_delay * (2 ** (attempt - 1))))
                logger.warning(
                    "transient storage error %s %s (attempt %d/%d), retrying in %.2fs: %s",
                    action,
                    display_uri(fs, path),
                    attempt,
                    retries + 1,
                    delay,
                    _redact(_detail(exc), fs, storage_options),
                )
                (sleep or time.sleep)(delay)
                continue
            raise _error_for(
                kind,
                exc,
                action=action,
                fs=fs,
                path=path,
                attempts=attempt,
                storage_options=storage_options,
            ) from exc


# --------------------------------------------------------------------------------------------
# Reads and writes
# --------------------------------------------------------------------------------------------


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it where possible (os.umask is not thread-safe
    to query: it sets the mask, and another thread could create a file meanwhile)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except (OSError, ValueError):
            pass
        if _UMASK is None:
            mask = os.umask(0o022)
            os.umask(mask)
            _UMASK = mask
    return _UMASK


def _write_local_atomic(path: str, data: bytes) -> None:
    _replace_local_atomic(path, lambda f: f.write(data))


def _replace_local_atomic(path: str, write: Callable[[Any], Any]) -> None:
    """`write(file)` into a temporary sibling of `path`, fsync, then rename it to `path`."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the usual umask-based mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


#: extension -> MIME type of what latentmill writes (media, manifests, JSON records); browsers and
#: CDNs show an object inline only with the right Content-Type (S3's default is binary/octet-stream).
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "apng": "image/apng",
    "mp4": "video/mp4",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def content_type(path: str) -> str:
    """The MIME type of ``path`` from its extension (``application/octet-stream`` when unknown)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if "." in name.lstrip("."):
        extension = name.rsplit(".", 1)[-1].lower()
        if extension in CONTENT_TYPES:
            return CONTENT_TYPES[extension]
        import mimetypes

        guessed, encoding = mimetypes.guess_type(name, strict=False)
        if guessed and not encoding:
            return guessed
    return DEFAULT_CONTENT_TYPE


def _put_options(fs: Any, path: str, mime: str | None) -> dict[str, str]:
    """Extra ``pipe_file`` arguments that set the object's Content-Type, for the stores that take one."""
    proto = getattr(fs, "protocol", ())
    protos = (proto,) if isinstance(proto, str) else tuple(proto)
    if "s3" in protos or "s3a" in protos:  # s3fs passes them to PutObject / CreateMultipartUpload
        return {"ContentType": mime or content_type(path)}
    return {}


def put_bytes(
    fs: Any,
    path: str,
    data: bytes,
    *,
    content_type: str | None = None,
    retries: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
) -> None:
    """Write ``data`` to ``path`` so that it appears under its final name only when complete.

    Local filesystems: a temp file in the same directory (``.<name>.<random>.tmp``), fsync, then
    ``os.replace``; parent directories are created. Object stores: a single ``pipe_file`` (one
    PUT, or a multipart upload that only becomes visible when completed), which is atomic. On S3
    the object gets the Content-Type ``content_type``, by default the one of the path's extension
    (:func:`content_type`), so that browsers show media inline.

    Transient errors (connection reset/refused, timeouts, HTTP 429/500/502/503/504, SlowDown)
    are retried up to ``retries`` times with exponential backoff and full jitter. Auth and
    missing-bucket errors are not retried. Failures raise ``StorageError``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if _is_local(fs):
        local_path = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path

        def op() -> None:
            _write_local_atomic(local_path, data)

        path = local_path
    else:
        options = _put_options(fs, path, content_type)

        def op() -> None:
            fs.pipe_file(path, data, **options)

    _retry(
        op,
        action="writing",
        fs=fs,
        path=path,
        retries=retries,
        base_delay=base_delay,
        max_delay=max_delay,
    )


def put_file(
    fs: Any,
    local_path: str,
    path: str,
    *,
    content_type: str | None = None,
    part_size: int | None = None,
    retries: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
) -> None:
    """Write the local file `local_path` to `path` as `put_bytes` writes bytes, without reading it into
    memory: locally a copy into a temporary sibling and a rename; on object stores fsspec's `put_file`,
    one PUT or, for a large file, a multipart upload of `part_size` parts (s3fs's default: 50 MiB, used
    from 100 MiB on) that becomes visible only when complete. Errors and retries as for `put_bytes`."""
    if _is_local(fs):
        target = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path

        def op() -> None:
            with open(local_path, "rb") as source:
                _replace_local_atomic(target, lambda f: shutil.copyfileobj(source, f, 16 * 2**20))

        path = target
    else:
        options = _put_options(fs, path, content_type)
        if part_size is not None:
            options["chunksize"] = part_size

        def op() -> None:
            fs.put_file(local_path, path, **options)

    _retry(op, action="writing", fs=fs, path=path, retries=retries, base_delay=base_delay, max_delay=max_delay)


def read_bytes(
    fs: Any,
    path: str,
    *,
    retries: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
) -> bytes:
    """Read a whole object, retrying transient errors like ``put_bytes``.

    A missing object raises ``StorageNotFoundError`` (a ``FileNotFoundError``).
    """
    return _retry(
        lambda: fs.cat_file(path),
        action="reading",
        fs=fs,
        path=path,
        retries=retries,
        base_delay=base_delay,
        max_delay=max_delay,
    )


# --------------------------------------------------------------------------------------------
# Early checks
# --------------------------------------------------------------------------------------------

#: botocore settings used for the early checks so that a dead endpoint fails in seconds.
PROBE_CONFIG_KWARGS = {
    "connect_timeout": 3,
    "read_timeout": 10,
    "retries": {"max_attempts": 1, "mode": "standard"},
}
_PROBE_RETRIES = 2


def _probe_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """Resolve ``uri`` with a private filesystem instance that fails fast."""
    import fsspec.core

    options = dict(storage_options or {})
    try:
        protocol = fsspec.core.split_protocol(uri)[0] or "file"
    except Exception:  # pragma: no cover
        protocol = "file"
    if protocol in ("s3", "s3a"):
        cfg = dict(options.get("config_kwargs") or {})
        for k, v in PROBE_CONFIG_KWARGS.items():
            cfg.setdefault(k, v)
        options["config_kwargs"] = cfg
    options["skip_instance_cache"] = True
    fs, path = resolve(uri, options)
    if hasattr(fs, "retries"):
        try:
            fs.retries = 1  # s3fs's own retry loop for ReadTimeout & co.
        except Exception:  # pragma: no cover
            pass
    return fs, path


def _first_missing_folder(path: str) -> str | None:
    """The outermost folder of a local `path` that does not exist yet (the probe creates it)."""
    missing = None
    current = os.path.abspath(path)
    while not os.path.exists(current):
        missing, current = current, os.path.dirname(current)
    return missing


def _remove_empty_folders(path: str, up_to: str) -> None:
    current = os.path.abspath(path)
    while True:
        try:
            os.rmdir(current)
        except OSError:
            return
        if current == up_to:
            return
        current = os.path.dirname(current)


def check_writable(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail early (before loading models) if ``uri`` cannot be written.

    Writes ``<uri>/_latentmill_probe-<uuid>`` and deletes it. Raises ``StorageError`` naming the
    URI and the likely fix on wrong credentials, missing bucket or an unreachable endpoint; the
    probe uses short timeouts and few retries, so a dead endpoint fails within seconds.
    """
    fs, path = _probe_fs(uri, storage_options)
    if not path.strip("/") and not _is_local(fs):
        raise StorageError(f"Output URI {uri!r} names no bucket; use e.g. s3://bucket/prefix.")
    probe = join(path, f"_latentmill_probe-{uuid.uuid4().hex}")
    created = _first_missing_folder(path) if _is_local(fs) else None
    try:
        put_bytes(fs, probe, b"latentmill write probe\n", retries=_PROBE_RETRIES, base_delay=0.2)
    except StorageError as exc:
        # Keep the class (StorageNotFoundError for a missing bucket).
        raise type(exc)(
            _redact(f"Output location {uri} is not writable: {exc}", fs, storage_options)
        ) from exc
    try:
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - leaving a 23-byte probe behind is not fatal
        logger.warning(
            "could not delete write probe %s (%s); it can be removed by hand",
            display_uri(fs, probe),
            _redact(_detail(exc), fs, storage_options),
        )
    if created is not None:  # a job stopped by a later check leaves no empty output folder behind
        _remove_empty_folders(path, created)
