"""Early checks that an output location is writable, before a cluster starts: a dead endpoint, missing
credentials or a read-only bucket fail in seconds with a message naming the fix, not mid-run.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from latentmill.io.storage import join, put_bytes, resolve
from latentmill.io.storage_errors import StorageError, display_uri, exception_detail, is_local, redact

logger = logging.getLogger(__name__)


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
    if not path.strip("/") and not is_local(fs):
        raise StorageError(f"Output URI {uri!r} names no bucket; use e.g. s3://bucket/prefix.")
    probe = join(path, f"_latentmill_probe-{uuid.uuid4().hex}")
    created = _first_missing_folder(path) if is_local(fs) else None
    try:
        put_bytes(fs, probe, b"latentmill write probe\n", retries=_PROBE_RETRIES, base_delay=0.2)
    except StorageError as exc:
        # Keep the class (StorageNotFoundError for a missing bucket).
        raise type(exc)(
            redact(f"Output location {uri} is not writable: {exc}", fs, storage_options)
        ) from exc
    try:
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - leaving a 23-byte probe behind is not fatal
        logger.warning(
            "could not delete write probe %s (%s); it can be removed by hand",
            display_uri(fs, probe),
            redact(exception_detail(exc), fs, storage_options),
        )
    if created is not None:  # a job stopped by a later check leaves no empty output folder behind
        _remove_empty_folders(path, created)
