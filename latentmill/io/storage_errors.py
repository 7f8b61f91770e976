"""Storage errors a user can act on: what failed, classified (credentials, access, missing bucket or key,
transient), with every secret redacted from messages, and retries for the transient ones.

A leaf like io.storage: neither ray nor torch; botocore's exception classes are recognised by name.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

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


def redact(text: str, fs: Any = None, storage_options: Any = None) -> str:
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


def display_uri(fs: Any, path: str) -> str:
    """A URI for messages: ``s3://bucket/key`` or the local path."""
    if is_local(fs):
        return path
    try:
        return fs.unstrip_protocol(path)
    except Exception:  # pragma: no cover - exotic filesystems
        return path


def is_local(fs: Any) -> bool:
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


def exception_detail(exc: BaseException) -> str:
    # The most informative text: a ClientError's message if there is one, else the outermost.
    for e in _chain(exc):
        code, status = _response(e)
        if code or status:
            return f"{type(e).__name__}: {e}"
    return f"{type(exc).__name__}: {exc}"


def _bucket_of(fs: Any, path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def error_for(
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
    detail = exception_detail(exc)
    local = is_local(fs)
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
    err.args = (redact(str(err.args[0]), fs, storage_options),)
    err.fatal = kind in (_CREDENTIALS, _AUTH, _MISSING_BUCKET) or (kind == _NOT_FOUND and action == "writing")
    return err


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def retry(
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
                    redact(exception_detail(exc), fs, storage_options),
                )
                (sleep or time.sleep)(delay)
                continue
            raise error_for(
                kind,
                exc,
                action=action,
                fs=fs,
                path=path,
                attempts=attempt,
                storage_options=storage_options,
            ) from exc


