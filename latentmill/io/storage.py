"""Object-storage operations: URI resolution, safe keys, atomic writes and reads with retries.

Errors and their messages are in io.storage_errors; the early writability checks in io.probes.

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

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from latentmill.io.storage_errors import StorageError, is_local, redact, retry

if TYPE_CHECKING:  # pragma: no cover
    import fsspec

__all__ = ["StorageError", "resolve", "join", "safe_key", "put_bytes", "put_file", "read_bytes", "content_type"]

logger = logging.getLogger(__name__)

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
        raise StorageError(redact(msg, storage_options=storage_options)) from exc


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
    if is_local(fs):
        local_path = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path

        def op() -> None:
            _write_local_atomic(local_path, data)

        path = local_path
    else:
        options = _put_options(fs, path, content_type)

        def op() -> None:
            fs.pipe_file(path, data, **options)

    retry(
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
    if is_local(fs):
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

    retry(op, action="writing", fs=fs, path=path, retries=retries, base_delay=base_delay, max_delay=max_delay)


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
    return retry(
        lambda: fs.cat_file(path),
        action="reading",
        fs=fs,
        path=path,
        retries=retries,
        base_delay=base_delay,
        max_delay=max_delay,
    )


