"""Read what a run wrote (manifest and error parts, runs/*.json, summary.json) and make thumbnails.

Everything goes through latentmill.io.storage, so an output on local disk and one on S3 read alike.
No Ray, no torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from latentmill import schema

log = logging.getLogger(__name__)

_RUN_ID_RE = re.compile(r"^part-(?P<run>.+)-(?P<n>\d+)\.parquet$")
THUMB_FOLDER = "thumbs"


class ReportError(Exception):
    """The report cannot be made (no such output, unreadable storage); the message says why."""


@dataclass
class Part:
    path: str
    run_id: str
    rows: int
    mtime: float | None  # seconds since the epoch; None where the store does not say


@dataclass
class Output:
    """One output folder or URI as the report sees it."""

    uri: str  # normalized: an absolute local path or scheme://...
    label: str
    fs: Any
    root: str
    manifest: Any = None  # pyarrow.Table, None when there is no manifest part
    errors: Any = None
    parts: list[Part] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # runs/*.json, oldest first, with "_mtime"
    summary: dict[str, Any] | None = None
    job_record: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # what could not be read, said on the page

    @property
    def manifest_rows(self) -> int:
        return 0 if self.manifest is None else self.manifest.num_rows

    @property
    def error_rows(self) -> int:
        return 0 if self.errors is None else self.errors.num_rows

    def media_uri(self, output_uri: str | None) -> str | None:
        """Where a manifest row's object is: its output_uri, or DEST/media/<name> when the output was
        moved or copied since (the manifest names objects by the URI they were written to)."""
        if not output_uri:
            return None
        if _strip_file_scheme(output_uri).startswith(self.uri.rstrip("/") + "/"):
            return _strip_file_scheme(output_uri)
        from latentmill.io import storage

        return storage.join(self.uri, "media", output_uri.rstrip("/").rsplit("/", 1)[-1])


def normalize_uri(uri: str) -> str:
    """A local path made absolute (like `run` does for its output), a URI as given without a trailing slash."""
    uri = _strip_file_scheme(uri)
    if "://" in uri:
        return uri.rstrip("/") or uri
    return os.path.abspath(os.path.expanduser(uri))


def _strip_file_scheme(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _label(uri: str) -> str:
    parts = [p for p in uri.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else uri)


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def listing(fs, folder: str, suffix: str) -> dict[str, dict[str, Any]]:
    """Objects under `folder` ending in `suffix` (path -> info); temporary files (.name) are skipped."""
    try:
        found = fs.find(folder, detail=True)
    except FileNotFoundError:
        return {}
    return {path: info for path, info in sorted(found.items())
            if path.endswith(suffix) and not path.rsplit("/", 1)[-1].startswith((".", "_"))}


def _read_parts(output: Output, kind: str) -> tuple[Any, list[Part]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentmill.io import storage

    tables, parts = [], []
    for path, info in listing(output.fs, storage.join(output.root, kind), ".parquet").items():
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(output.fs, path)))
        except Exception as exc:  # noqa: BLE001 - one damaged part must not hide the rest
            output.problems.append(f"{kind} part {path.rsplit('/', 1)[-1]} could not be read: "
                                   f"{type(exc).__name__}: {exc}")
            continue
        name = path.rsplit("/", 1)[-1]
        match = _RUN_ID_RE.match(name)
        parts.append(Part(path, match.group("run") if match else "", table.num_rows, _mtime(info)))
        if table.num_rows:
            tables.append(table)
    if not tables:
        return None, parts
    try:
        return pa.concat_tables(tables, promote_options="permissive"), parts
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # columns of different types in different parts
        output.problems.append(f"the {kind} parts' columns differ in type ({exc}); columns of the "
                               "first part's types only are shown")
        first = tables[0].schema
        kept = [t.select([n for n in first.names if n in t.column_names]) for t in tables
                if all(t.schema.field(n).type == first.field(n).type for n in first.names if n in t.column_names)]
        return pa.concat_tables(kept, promote_options="permissive"), parts


def _read_json(output: Output, path: str) -> dict[str, Any] | None:
    from latentmill.io import storage

    try:
        return json.loads(storage.read_bytes(output.fs, path))
    except FileNotFoundError:
        return None
    except (ValueError, storage.StorageError) as exc:
        output.problems.append(f"{path.rsplit('/', 1)[-1]} could not be read: {exc}")
        return None


def read_output(uri: str, storage_options: dict[str, Any] | None = None) -> Output:
    """Everything the report shows about one output; ReportError when it is not an output at all."""
    from latentmill.io import storage

    uri = normalize_uri(uri)
    try:
        fs, root = storage.resolve(uri, storage_options)
        names = {path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False)}
    except FileNotFoundError:
        raise ReportError(f"{uri}: no such output folder") from None
    except storage.StorageError as exc:
        raise ReportError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: say which output
        raise ReportError(f"{uri} could not be listed: {type(exc).__name__}: {exc}") from None
    if not names & {"manifest", "errors", "runs", "summary.json"}:
        raise ReportError(f"{uri} is not a latentmill output: it has no manifest/, errors/, runs/ or summary.json")
    output = Output(uri=uri, label=_label(uri), fs=fs, root=root)
    try:
        output.manifest, output.parts = _read_parts(output, "manifest")
        output.errors, _ = _read_parts(output, "errors")
        for path, info in listing(fs, storage.join(root, "runs"), ".json").items():
            run = _read_json(output, path)
            if isinstance(run, dict):
                run["_mtime"] = _mtime(info)
                output.runs.append(run)
        output.runs.sort(key=lambda run: str(run.get("run_id", "")))
        output.summary = _read_json(output, storage.join(root, "summary.json"))
        output.job_record = _read_json(output, storage.join(root, "_latentmill_job.json"))
    except storage.StorageError as exc:
        raise ReportError(str(exc)) from None
    return output


# ------------------------------------------------------------------------------------------ sampling


def sample_key(row_id: str) -> str:
    return hashlib.sha256(str(row_id).encode("utf-8", "surrogatepass")).hexdigest()


def deterministic_sample(ids: list[str], max_items: int) -> set[str]:
    """The `max_items` ids with the smallest sha256(id): the same ids on every report of the output,
    and the same ids in every output of one prompt table (so side-by-side samples line up)."""
    unique = set(ids)
    if len(unique) <= max_items:
        return unique
    return set(sorted(unique, key=sample_key)[:max_items])


# ------------------------------------------------------------------------------------------ thumbnails


def thumbnail(data: bytes, mime: str, size: int = 256) -> bytes:
    """A JPEG of at most size x size pixels: the image, or a video's first frame (the poster)."""
    from PIL import Image

    from latentmill.io.media import decode_video

    if mime.startswith("video/") or mime == "image/apng":
        image = Image.fromarray(decode_video(data)[0])
    else:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
        image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, optimize=True)
    return buffer.getvalue()


def thumb_name(row: dict[str, Any]) -> str:
    """Named by the object's content (its sha256), so equal outputs share one thumbnail and a later
    report of the same output reuses the thumbnails already made."""
    digest = row.get(schema.SHA256) or ""
    if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
        digest = sample_key(str(row.get(schema.OUTPUT_URI)))
    return f"{digest[:32]}.jpg"


def relative_link(report_fs, report_root: str, target_uri: str, storage_options: dict[str, Any] | None) -> str | None:
    """A relative URL from the report folder to an object, or None where no relative URL can reach it
    (another filesystem or bucket): the page must work from local disk and from object storage alike."""
    from latentmill.io import storage

    try:
        target_fs, target_path = storage.resolve(target_uri, storage_options)
    except (storage.StorageError, ValueError):
        return None
    if _protocols(target_fs) != _protocols(report_fs):
        return None
    local = "file" in _protocols(report_fs) or "local" in _protocols(report_fs)
    if not local and target_path.split("/", 1)[0] != report_root.split("/", 1)[0]:
        return None  # another bucket
    start = report_root if local else "/" + report_root
    relative = posixpath.relpath(target_path if local else "/" + target_path, start)
    return urllib.parse.quote(relative, safe="/")


def _protocols(fs) -> frozenset[str]:
    protocol = getattr(fs, "protocol", ())
    return frozenset((protocol,) if isinstance(protocol, str) else protocol)
