"""`latentmill status` and `latentmill verify`: a job's progress and its outputs' integrity, read from the
output folder alone (no Ray, no model, nothing of the running job is touched).

status counts manifest and error rows from Parquet footers, finds the latest run from the parts' names
(`part-<run_id>-<n>.parquet`; run ids start with the run's start time) and `summary.json`, the input's
rows from its footers, and a rate from the modification times of the latest run's parts (the only clock
an output folder has: manifest rows carry no timestamps).

verify reads back every object a manifest row (or an interpolation job's transition row) names and
compares size and sha256 with the row; it also lists the objects under media/, latents/ and videos/ that
no row names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentmill import schema

log = logging.getLogger(__name__)

JOB_RECORD = "_latentmill_job.json"  # as pipelines.resume writes it
MANIFEST, ERRORS, SUMMARY = "manifest", "errors", "summary.json"
TRANSITIONS, VIDEOS = "transitions", "videos"  # interpolation jobs (pipelines.interpolate)
FRAME_COLUMN = "transition_id"  # a manifest column of interpolation jobs only (actors.blend.TRANSITION)
OBJECT_FOLDERS = ("media", "latents", VIDEOS)  # where latentmill writes the objects rows name
# ResultWriter's parts: part-<run_id>-<n>.parquet; an interpolation job's transitions: part-<run_id>.parquet.
_PART_RE = re.compile(r"^part-(?P<run>\d{8}T\d{6}-[0-9a-f]+?)(?:-\d+)?\.parquet$")
# io.storage's atomic local writes leave temporary files: .<name>.<random>.tmp
_TEMP_RE = re.compile(r"^\..+\.tmp$")
RATE_INTERVALS = 10  # the rate is measured over the last this many intervals between part writes
THREADS = 16
WHOLE_READ_BYTES = 64 << 20  # objects up to this size are read in one request; larger ones are streamed
_LISTED = 20  # findings printed per kind (--json lists all)
FAIL_FAST = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}


class InspectError(Exception):
    """The output cannot be inspected; the message says why and what to do."""


# ---- storage options and arguments ------------------------------------------------------------------


def job_file_sections(path: str | Path | None) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """(fsspec storage options, output.uri, input section) of a job file; only the storage section must
    be valid (the job file may lack the input and output a run needs)."""
    if path is None:
        return {}, None, {}
    import yaml
    from pydantic import ValidationError

    from latentmill.config import StorageSettings

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InspectError(f"cannot read job file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InspectError(f"job file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InspectError(f"job file {path} must be a mapping of sections (storage, output, ...)")
    try:
        settings = StorageSettings.model_validate(data.get("storage") or {})
    except ValidationError as exc:
        problems = "; ".join(f"storage.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InspectError(f"invalid storage section in {path}: {problems}") from None
    output = (data.get("output") or {}).get("uri") if isinstance(data.get("output"), dict) else None
    section = data.get("input") if isinstance(data.get("input"), dict) else {}
    return settings.fsspec_options(), output or None, section


def _fail_fast(dest: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """S3 options that give up on an unreachable endpoint in seconds rather than minutes (botocore's
    defaults: a 60 s connect timeout, retried); settings of the caller's own config_kwargs win."""
    options = dict(storage_options or {})
    if dest.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        for key, value in FAIL_FAST.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
    return options


def _destination(args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any]]:
    options, output, input_section = job_file_sections(args.config)
    dest = args.dest or output
    if not dest:
        raise InspectError("name the job's output folder or URI (DEST), or pass --config with a job file whose "
                           "output.uri names it")
    return dest, options, input_section


# ---- listing and Parquet footers ----------------------------------------------------------------------


def _retry(fn, fs, path: str, action: str = "reading"):
    """`fn()` with latentmill's storage retries; failures become StorageError (a missing object:
    StorageNotFoundError, also a FileNotFoundError)."""
    from latentmill.io.storage_errors import retry as storage_retry

    return storage_retry(fn, action=action, fs=fs, path=path, retries=3, base_delay=0.2, max_delay=5.0)


def _find(fs, folder: str) -> dict[str, dict[str, Any]]:
    """path -> info of every file under `folder` (none when it does not exist), listed afresh."""
    try:
        fs.invalidate_cache(folder)  # s3fs keeps listings; a running job keeps adding to this folder
    except Exception:  # noqa: BLE001 - a filesystem without a listings cache
        pass

    def listing():
        try:
            return fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}

    found = _retry(listing, fs, folder, "listing")
    return {path: info for path, info in found.items() if info.get("type", "file") != "directory"}


def _modified(info: dict[str, Any]) -> float | None:
    """An object's modification time (epoch seconds) from an fsspec `info()`/listing entry."""
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


@dataclass
class Part:
    path: str
    run_id: str | None  # None: a name latentmill did not write
    rows: int = 0
    modified: float | None = None


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _run_of(path: str) -> str | None:
    match = _PART_RE.match(_name(path))
    return match.group("run") if match else None


def _parquet_paths(listing: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(p for p in listing if p.endswith(".parquet") and not _name(p).startswith("."))


_PART_ADVICE = "move it out of the output folder (a resumed run would stop on it too)"


def _parts(fs, folder: str, threads: int = THREADS, footers: bool = True) -> list[Part]:
    """The Parquet parts in `folder`, with their rows (from the footers) and modification times. A part
    that vanished since the listing (a finishing run deletes the earlier runs' error parts) is left out."""
    listing = _find(fs, folder)
    parts = [Part(path, _run_of(path), modified=_modified(listing[path])) for path in _parquet_paths(listing)]
    if footers and parts:
        with ThreadPoolExecutor(min(threads, len(parts))) as pool:
            rows = list(pool.map(lambda p: _footer_rows(fs, p.path, _PART_ADVICE, vanished=-1), parts))
        for part, count in zip(parts, rows):
            part.rows = count
        parts = [part for part in parts if part.rows >= 0]
    return parts


def _footer_rows(fs, path: str, advice: str = "", vanished: int | None = None) -> int:
    """Rows of a Parquet file from its footer; `vanished` (when not None) for a file that is gone."""
    import pyarrow.parquet as pq

    from latentmill.io.storage_errors import StorageError, display_uri

    def read() -> int:
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    try:
        return _retry(read, fs, path)
    except FileNotFoundError:
        if vanished is None:
            raise
        return vanished
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InspectError(f"{display_uri(fs, path)} is not a readable Parquet file ({_cause(exc)})"
                           + (f"; {advice}" if advice else "")) from None


def _read_columns(fs, path: str, wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of a part, with those of `wanted` columns it has."""
    import pyarrow.parquet as pq

    from latentmill.io.storage_errors import StorageError, display_uri

    def read():
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            return parquet.read(columns=[c for c in wanted if c in names]).to_pylist()

    try:
        return _retry(read, fs, path)
    except FileNotFoundError:  # deleted since the listing (see `_parts`)
        return []
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InspectError(f"{display_uri(fs, path)} is not a readable Parquet file ({_cause(exc)}); "
                           f"{_PART_ADVICE}") from None


def _read_json(fs, path: str) -> dict[str, Any] | None:
    from latentmill.io.storage import read_bytes
    from latentmill.io.storage_errors import display_uri

    try:
        data = read_bytes(fs, path, retries=3)
    except FileNotFoundError:
        return None
    try:
        loaded = json.loads(data)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", display_uri(fs, path))
        return None
    return loaded if isinstance(loaded, dict) else None


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _open_output(dest: str, options: dict[str, Any]):
    """(fs, root, job record or None); InspectError when DEST holds no latentmill output."""
    from latentmill.io.storage import join, resolve

    fs, root = resolve(dest, options)
    record = _read_json(fs, join(root, JOB_RECORD))
    if record is None and not _find(fs, join(root, MANIFEST)):
        where = "the path" if "://" not in dest else "the URI, the endpoint and the credentials (AWS_* or --config)"
        raise InspectError(f"{dest} holds no latentmill output (no {JOB_RECORD}, no manifest/): check {where}")
    return fs, root, record


def _latest_run(parts: list[Part], summary: dict[str, Any] | None) -> str | None:
    """The newest run that left a trace: a part, or the summary (a run with nothing to write has no part).
    Run ids start with their start time (YYYYmmddTHHMMSS), so they sort by it."""
    runs = {part.run_id for part in parts if part.run_id}
    if summary and summary.get("run_id"):
        runs.add(str(summary["run_id"]))
    return max(runs) if runs else None


# ---- status -----------------------------------------------------------------------------------------------


@dataclass
class Status:
    output: str
    kind: str = "generate"  # generate | decode | interpolate
    model: str | None = None
    input: str | None = None
    input_rows: int | None = None
    input_note: str | None = None  # why the input's rows are unknown, or what was assumed
    expected: int | None = None  # outputs the job asks for (rows x samples per prompt, up to input.limit)
    done: int = 0  # manifest rows: outputs written and recorded
    manifest_parts: int = 0
    failed: int = 0  # error rows of the latest run
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    failed_earlier: int = 0  # error rows of earlier runs still there: the latest run retries them
    pending: int | None = None
    transitions_done: int | None = None  # interpolation jobs
    latest_run: str | None = None
    finished: bool = False
    summary: dict[str, Any] | None = None  # counts of the latest run's summary.json, when it finished
    rate: float | None = None  # outputs per second, latest run, recent parts
    rows_rate: float | None = None  # outputs + error rows per second: what ETA divides by
    rate_window_s: float | None = None
    rate_writes: int = 0  # part writes the rate spans (parts written within a second count as one)
    rate_note: str | None = None
    eta_s: float | None = None
    eta_at: str | None = None
    last_write: str | None = None
    last_write_age_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows: list[tuple[str, str]] = [("output", self.output)]
        if self.model:
            rows.append(("model", self.model))
        if self.input:
            rows.append(("input", self.input))
        if self.input_rows is not None:
            rows.append(("input rows", f"{self.input_rows}" + (f" ({self.input_note})" if self.input_note else "")))
        else:
            rows.append(("input rows", f"unknown: {self.input_note}"))
        noun = "frames done" if self.kind == "interpolate" else "outputs done"
        share = f" of {self.expected} ({100 * self.done / self.expected:.1f}%)" if self.expected else ""
        rows.append((noun, f"{self.done}{share}"))
        if self.transitions_done is not None:
            rows.append(("transitions done", str(self.transitions_done)))
        rows.append(("failed", f"{self.failed}" + (f" (run {self.latest_run})" if self.latest_run else "")))
        rows += [(f"  in {stage}", str(count)) for stage, count in sorted(self.failed_by_stage.items())]
        if self.failed_earlier:
            rows.append(("earlier errors", f"{self.failed_earlier} error row(s) of earlier runs, retried by the "
                         "latest run (removed when it finishes)"))
        if self.pending is not None:
            rows.append(("pending", str(self.pending)))
        if self.rate is not None:
            rows.append(("rate", f"{self.rate:.3g} outputs/s (last {self.rate_writes} part writes over "
                         f"{_duration(self.rate_window_s or 0)})"))
        else:
            rows.append(("rate", f"unknown: {self.rate_note}"))
        if self.eta_s is not None:
            rows.append(("ETA", f"{_duration(self.eta_s)} (about {self.eta_at})"))
        if self.last_write:
            rows.append(("last part", f"{self.last_write} ({_duration(self.last_write_age_s or 0)} ago)"))
        rows.append(("run", self._run_line()))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)

    def _run_line(self) -> str:
        if self.latest_run is None:
            return "no run has written anything yet"
        if not self.finished:
            return (f"{self.latest_run} in progress, or stopped (no summary yet); if it stopped, re-run the "
                    "job's command to resume it")
        counts = self.summary or {}
        if "transitions_read" in counts:
            text = (f"{self.latest_run} finished: {counts.get('transitions_written', 0)} transitions written, "
                    f"{counts.get('already_done', 0)} already done, {counts.get('transitions_failed', 0)} failed")
        else:
            text = (f"{self.latest_run} finished: {counts.get('outputs_written', 0)} written, "
                    f"{counts.get('already_done', 0)} already done, {counts.get('rows_failed', 0)} failed")
        if counts.get("wall_seconds") is not None:
            text += f" in {_duration(counts['wall_seconds'])}"
        if counts.get("budget_exceeded"):
            text += "; the error budget (max_failed) was exceeded"
        return text


def status(dest: str, storage_options: dict[str, Any] | None = None, input_section: dict[str, Any] | None = None,
           now: float | None = None, threads: int = THREADS) -> Status:
    """What the output folder says about its job's progress. `input_section`: a job file's input settings,
    used for samples_per_prompt and limit until a run has finished (its summary records them)."""
    from latentmill.io.storage import StorageError

    options = _fail_fast(dest, storage_options)
    now = time.time() if now is None else now
    try:
        return _status(dest, options, input_section, now, threads)
    except StorageError as exc:
        raise InspectError(str(exc)) from None


def _status(dest: str, options: dict[str, Any], input_section: dict[str, Any] | None, now: float,
            threads: int) -> Status:
    from latentmill.io.outputs import SHARDS
    from latentmill.io.storage import join

    fs, root, record = _open_output(dest, options)
    manifest = _parts(fs, join(root, MANIFEST), threads)
    errors = _parts(fs, join(root, ERRORS), threads)
    transitions = _parts(fs, join(root, TRANSITIONS), threads)
    summary = _read_json(fs, join(root, SUMMARY))
    record = record or {}
    report = Status(output=dest, model=record.get("model"), input=record.get("input"))
    config = (summary or {}).get("config") or {}
    if (config.get("interpolate") or transitions or (summary and "transitions_read" in summary)
            or (manifest and _frame_rows(fs, manifest[-1].path))):
        report.kind = "interpolate"
    elif config.get("decode"):
        report.kind = "decode"
    # A sharded output (output.layout webdataset or parquet): every shards/NNNNN.parquet is a committed shard.
    shards = _parts(fs, join(root, SHARDS), threads)
    report.done = sum(part.rows for part in manifest + shards)
    report.manifest_parts = len(manifest) + len(shards)
    if report.kind == "interpolate":
        report.transitions_done = sum(part.rows for part in transitions)

    report.latest_run = latest = _latest_run(manifest + errors + transitions, summary)
    report.finished = latest is not None and summary is not None and summary.get("run_id") == latest
    if report.finished:
        report.summary = {key: value for key, value in summary.items() if key != "config"}
    _count_failed(fs, report, errors, latest)
    _expectation(report, options, config, input_section or {}, summary if report.finished else None)
    _rate(report, [p for p in manifest if p.run_id == latest], [p for p in errors if p.run_id == latest], now)
    return report


def _frame_rows(fs, path: str) -> bool:
    """Whether a manifest part holds an interpolation job's frames (before its first run ends, nothing
    else tells: transitions/ and the summary are written at the end)."""
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            return FRAME_COLUMN in pq.ParquetFile(handle).schema_arrow.names
    except Exception:  # noqa: BLE001 - vanished or unreadable: _parts has already read its footer
        return False


def _count_failed(fs, report: Status, errors: list[Part], latest: str | None) -> None:
    """Error rows of the latest run. A resumed run retries every earlier error row and removes the earlier
    runs' error parts when it ends: until then they are not failures of the job's current state."""
    for part in errors:
        if part.run_id is None:  # a name latentmill does not write: ask the rows
            runs = Counter(row.get("run_id") for row in _read_columns(fs, part.path, ("run_id",)))
            latest_rows = runs.pop(latest, 0)
            report.failed_earlier += sum(runs.values())
        else:
            latest_rows = part.rows if part.run_id == latest else 0
            report.failed_earlier += part.rows - latest_rows
        if latest_rows:
            report.failed += latest_rows
            for row in _read_columns(fs, part.path, (schema.ERROR_STAGE, "run_id")):
                if part.run_id is not None or row.get("run_id") == latest:
                    stage = row.get(schema.ERROR_STAGE) or "unknown"
                    report.failed_by_stage[stage] = report.failed_by_stage.get(stage, 0) + 1


def _expectation(report: Status, options: dict[str, Any], config: dict[str, Any], input_section: dict[str, Any],
                 finished: dict[str, Any] | None) -> None:
    """The input's rows (footers only) and the outputs the job asks for: the finished latest run's count,
    else rows x samples_per_prompt up to input.limit, as a finished run's summary recorded them (every run
    of an output has the same input settings: they are part of the job fingerprint), else as the job file
    passed with --config says, else assumed 1 and none."""
    if report.input:
        report.input_rows, report.input_note = input_rows(report.input, options)
    else:
        report.input_note = f"{JOB_RECORD} names no input"
    if report.kind == "interpolate":  # rows are keyframes, the manifest's rows frames: no common unit
        if report.input_rows is not None:
            report.input_note = "keyframe rows"
        return
    if finished is not None and isinstance(finished.get("requests"), int):
        report.expected = finished["requests"]
    elif report.input_rows is not None:
        settings = config.get("input") or input_section
        samples = settings.get("samples_per_prompt") or 1
        limit = settings.get("limit")
        rows = min(report.input_rows, limit) if isinstance(limit, int) and limit > 0 else report.input_rows
        report.expected = rows * (samples if isinstance(samples, int) and samples > 0 else 1)
        if not settings:
            report.input_note = ("1 sample per prompt and no input.limit assumed until a run finishes; pass "
                                 "--config with the job file to use its values")
    if report.expected is not None:
        report.pending = max(0, report.expected - report.done - report.failed)


def input_rows(uri: str, options: dict[str, Any], threads: int = THREADS) -> tuple[int | None, str | None]:
    """(rows of the Parquet table at `uri` from its footers, None) or (None, why they are unknown)."""
    from latentmill.io.storage import resolve
    from latentmill.io.storage_errors import StorageError, display_uri
    from latentmill.pipelines.inputs import _list_files

    try:
        fs, path = resolve(uri, options)
        files = _list_files(fs, path)
    except StorageError as exc:
        return None, f"cannot list the input: {exc}"
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs raise many types
        return None, f"cannot list the input {uri}: {_cause(exc)}"
    if not files:
        relative = "://" not in uri and not uri.startswith("/")
        hint = " (a relative path is read from the current directory)" if relative else ""
        return None, f"the input {uri} is not there{hint}"
    try:
        with ThreadPoolExecutor(min(threads, len(files))) as pool:
            return sum(pool.map(lambda file: _footer_rows(fs, file), files)), None
    except (InspectError, StorageError) as exc:
        return None, f"cannot read the input's footers: {exc}"
    except Exception as exc:  # noqa: BLE001
        return None, f"cannot read the footers of {display_uri(fs, path)}: {_cause(exc)}"


def _rate(report: Status, manifest: list[Part], errors: list[Part], now: float) -> None:
    """Outputs per second from the modification times of the latest run's parts: the rows of the parts
    written after the first part in the window, over the time since it. Parts written within a second
    of each other (a manifest part and an error part of one flush) count as one write."""
    outputs = {id(part) for part in manifest}
    timed = sorted((p.modified, p.rows, id(p) in outputs) for p in manifest + errors if p.modified is not None)
    if timed:
        last = timed[-1][0]
        report.last_write = _clock(last)
        report.last_write_age_s = max(0.0, now - last)
    if report.kind == "interpolate":
        report.rate_note = "not measured for interpolation jobs (transitions are recorded when their run ends)"
        return
    writes: list[list[float]] = []  # [time, outputs, rows]
    for modified, rows, is_manifest in timed:
        if writes and modified - writes[-1][0] < 1.0:
            writes[-1][0] = modified
            writes[-1][1] += rows if is_manifest else 0
            writes[-1][2] += rows
        else:
            writes.append([modified, rows if is_manifest else 0, rows])
    window = writes[-(RATE_INTERVALS + 1):]
    span = window[-1][0] - window[0][0] if len(window) >= 2 else 0.0
    if len(window) < 2 or span <= 0:
        report.rate_note = ("needs two manifest writes of the latest run (a part is written every "
                            "output.manifest_rows_per_part rows, or after output.manifest_flush_seconds)")
        if len(manifest) + len(errors) and not timed:
            report.rate_note = "the storage reports no modification times"
        return
    report.rate = sum(write[1] for write in window[1:]) / span
    report.rows_rate = sum(write[2] for write in window[1:]) / span
    report.rate_window_s, report.rate_writes = span, len(window)
    if not report.finished and report.pending and report.rows_rate > 0:
        finish = window[-1][0] + report.pending / report.rows_rate
        report.eta_s = max(0.0, finish - now)
        report.eta_at = _clock(finish)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- verify -----------------------------------------------------------------------------------------------


@dataclass
class Named:
    """An object a manifest row (or a transition row) names."""

    kind: str  # media | latents | video
    id: str
    uri: str
    size: int | None  # None: the manifest records no size (latents)
    sha256: str | None
    part: str


@dataclass
class Finding:
    kind: str
    id: str
    uri: str
    problem: str  # missing | changed | unreadable
    detail: str = ""


@dataclass
class VerifyReport:
    output: str
    size_only: bool = False
    manifest_rows: int = 0
    checked: dict[str, int] = field(default_factory=dict)  # kind -> objects checked
    intact: int = 0
    missing: list[Finding] = field(default_factory=list)
    changed: list[Finding] = field(default_factory=list)
    unreadable: list[Finding] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.unreadable or self.extra or self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def text(self, listed: int = _LISTED) -> str:
        lines: list[str] = []
        for title, findings in (("missing", self.missing), ("changed", self.changed),
                                ("unreadable", self.unreadable)):
            for finding in findings[:listed]:
                detail = f": {finding.detail}" if finding.detail else ""
                lines.append(f"{title:<10}  {finding.uri}  ({finding.kind} of {finding.id}){detail}")
            if len(findings) > listed:
                lines.append(f"{title:<10}  ... and {len(findings) - listed} more (--json lists all)")
        for uri in self.extra[:listed]:
            lines.append(f"{'extra':<10}  {uri}")
        if len(self.extra) > listed:
            lines.append(f"{'extra':<10}  ... and {len(self.extra) - listed} more (--json lists all)")
        for text in self.duplicates[:listed]:
            lines.append(f"{'duplicate':<10}  {text}")
        if lines:
            lines.append("")
        checked = ", ".join(f"{count} {kind}" for kind, count in sorted(self.checked.items())) or "none"
        method = "size" if self.size_only else "size and sha256"
        rows = [("output", self.output), ("manifest rows", str(self.manifest_rows)),
                ("objects checked", f"{checked} ({method}, {_duration(self.seconds)})"),
                ("intact", str(self.intact)), ("missing", str(len(self.missing))),
                ("changed", str(len(self.changed)))]
        if self.unreadable:
            rows.append(("unreadable", str(len(self.unreadable))))
        rows.append(("extra", str(len(self.extra))))
        if self.duplicates:
            rows.append(("duplicates", str(len(self.duplicates))))
        width = max(len(label) for label, _ in rows)
        lines += [f"{label:<{width}}  {value}" for label, value in rows]
        if self.notes or not self.ok:
            lines += ["", *self.notes, *self.advice()]
        lines.append("OK: every object matches the manifest" if self.ok else "MISMATCH")
        return "\n".join(lines)

    def advice(self) -> list[str]:
        advice = []
        if self.missing or self.changed:
            advice.append("Missing or changed objects: re-run the job's command (once no run of it is in progress); "
                          "a resumed run regenerates every row whose object is missing or changed "
                          "(output.verify_existing: sha256, the default).")
        if self.unreadable:
            advice.append("Unreadable objects could not be checked (see each message); fix access and verify again.")
        if self.extra:
            advice.append("Extra objects are named by no manifest row: left by a run that stopped before writing "
                          "their manifest part (resuming rewrites them), or put there by hand; delete them if "
                          "unwanted.")
        if self.duplicates:
            advice.append("Duplicates break the one-row-per-output guarantee: please report this as a bug.")
        return advice


def verify(dest: str, storage_options: dict[str, Any] | None = None, size_only: bool = False,
           threads: int = THREADS) -> VerifyReport:
    """Check every object the output's manifest (and transitions) name against their rows."""
    from latentmill.io.storage import StorageError, join

    started = time.perf_counter()
    options = _fail_fast(dest, storage_options)
    report = VerifyReport(output=dest, size_only=size_only)
    try:
        fs, root, _ = _open_output(dest, options)
        manifest = _parts(fs, join(root, MANIFEST), threads, footers=False)
        transitions = _parts(fs, join(root, TRANSITIONS), threads, footers=False)
        named = _named_objects(fs, manifest, transitions, threads)
        # Listed after the manifest was read: every object a row names was written before its row.
        listed: dict[str, dict[str, Any]] = {}
        for folder in OBJECT_FOLDERS:
            for path, info in _find(fs, join(root, folder)).items():
                listed[fs.unstrip_protocol(path)] = info
        errors = _parts(fs, join(root, ERRORS), threads, footers=False)
        summary = _read_json(fs, join(root, SUMMARY))
    except StorageError as exc:
        raise InspectError(str(exc)) from None
    report.manifest_rows = sum(1 for entry in named if entry.kind == "media")
    resolver = _Resolver(options)
    keys = [resolver.key(entry.uri) for entry in named]
    _find_duplicates(report, named, keys)
    _check_all(report, named, keys, listed, resolver, size_only, threads)
    named_keys = set(keys)
    report.extra = sorted(_shown(key) for key in listed if key not in named_keys and not _TEMP_RE.match(_name(key)))
    _notes(report, fs, root, named, keys, manifest + errors + transitions, summary)
    report.seconds = time.perf_counter() - started
    return report


def _named_objects(fs, manifest: list[Part], transitions: list[Part], threads: int) -> list[Named]:
    wanted = (schema.ID, schema.OUTPUT_URI, schema.BYTES, schema.SHA256, schema.LATENTS_URI, schema.LATENTS_SHA256)

    videos = {part.path for part in transitions}

    def read(part: Part) -> list[Named]:
        found = []
        for row in _read_columns(fs, part.path, wanted):
            row_id = str(row.get(schema.ID))
            if part.path in videos:
                found.append(Named("video", row_id, row.get(schema.OUTPUT_URI), row.get(schema.BYTES),
                                   row.get(schema.SHA256), part.path))
                continue
            found.append(Named("media", row_id, row.get(schema.OUTPUT_URI), row.get(schema.BYTES),
                               row.get(schema.SHA256), part.path))
            if row.get(schema.LATENTS_URI) and row.get(schema.LATENTS_SHA256):
                found.append(Named("latents", row_id, row[schema.LATENTS_URI], None, row[schema.LATENTS_SHA256],
                                   part.path))
        return found

    parts = manifest + transitions
    if not parts:
        return []
    with ThreadPoolExecutor(min(threads, len(parts))) as pool:
        named = [entry for entries in pool.map(read, parts) for entry in entries]
    nameless = next((entry.part for entry in named if not entry.uri), None)
    if nameless is not None:
        raise InspectError(f"{nameless} has rows without an {schema.OUTPUT_URI}: not a latentmill manifest part; "
                           f"{_PART_ADVICE}")
    return named


def _shown(key: str) -> str:
    """A key as messages show it: the local path, or the URI."""
    return key[len("file://"):] if key.startswith("file://") else key


class _Resolver:
    """(filesystem, path) and a comparable key of object URIs, resolving each scheme once."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.filesystems: dict[str, Any] = {}

    def resolve(self, uri: str):
        from latentmill.io.storage import resolve

        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        if scheme not in self.filesystems:
            self.filesystems[scheme] = resolve(uri, self.options)[0]
        fs = self.filesystems[scheme]
        return fs, fs._strip_protocol(uri)

    def key(self, uri: str) -> str:
        """The URI in one spelling (file:///abs/path, s3://bucket/key); the URI itself if unresolvable."""
        try:
            fs, path = self.resolve(uri)
        except Exception:  # noqa: BLE001 - e.g. a protocol whose package is missing: reported by the check
            return uri
        return fs.unstrip_protocol(path)


def _find_duplicates(report: VerifyReport, named: list[Named], keys: list[str]) -> None:
    ids = Counter((entry.kind, entry.id) for entry in named if entry.kind != "latents")  # latents: their row's
    for (kind, row_id), count in sorted(ids.items()):
        if count > 1:
            what = "transition" if kind == "video" else "manifest"
            report.duplicates.append(f"{count} {what} rows for id {row_id!r}")
    by_key: dict[str, set[str]] = {}
    for entry, key in zip(named, keys):
        by_key.setdefault(key, set()).add(entry.id)
    for key, row_ids in sorted(by_key.items()):
        if len(row_ids) > 1:
            some = ", ".join(sorted(row_ids)[:3])
            report.duplicates.append(f"{_shown(key)} is named by {len(row_ids)} different rows ({some})")


def _check_all(report: VerifyReport, named: list[Named], keys: list[str], listed: dict[str, dict[str, Any]],
               resolver: _Resolver, size_only: bool, threads: int) -> None:
    from latentmill.io.storage import StorageError

    def check(index: int) -> Finding | None:
        entry = named[index]
        info = listed.get(keys[index])
        try:
            fs, path = resolver.resolve(entry.uri)
            return _check_one(entry, fs, path, info, size_only)
        except FileNotFoundError:
            return Finding(entry.kind, entry.id, entry.uri, "missing")
        except Exception as exc:  # noqa: BLE001 - StorageError and the like: report, keep checking the rest
            detail = str(exc) if isinstance(exc, StorageError) else _cause(exc)
            return Finding(entry.kind, entry.id, entry.uri, "unreadable", detail)

    last_log = time.monotonic()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(named), 4096):  # bounded: a manifest may name millions of objects
            for finding in pool.map(check, range(start, min(len(named), start + 4096))):
                if finding is None:
                    report.intact += 1
                else:
                    getattr(report, finding.problem).append(finding)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log.info("checked %d of %d objects", min(len(named), start + 4096), len(named))
    report.checked = dict(Counter(entry.kind for entry in named))


def _check_one(entry: Named, fs, path: str, info: dict[str, Any] | None, size_only: bool) -> Finding | None:
    if info is None:  # not in DEST's listing: outside DEST (a decode job's source latents), or missing
        info = _retry(lambda: fs.info(path), fs, path)
    size = info.get("size")
    if entry.size is not None and size is not None and int(size) != int(entry.size):
        return Finding(entry.kind, entry.id, entry.uri, "changed", f"{size} bytes, the manifest says {entry.size}")
    if size_only:
        return None
    digest = _sha256(fs, path, size)
    if digest != entry.sha256:
        return Finding(entry.kind, entry.id, entry.uri, "changed",
                       f"sha256 {digest[:12]}..., the manifest says {str(entry.sha256)[:12]}...")
    return None


def _sha256(fs, path: str, size: int | None) -> str:
    def whole() -> str:
        return hashlib.sha256(fs.cat_file(path)).hexdigest()

    def streamed() -> str:
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    return _retry(whole if size is not None and size <= WHOLE_READ_BYTES else streamed, fs, path)


def _notes(report: VerifyReport, fs, root: str, named: list[Named], keys: list[str], parts: list[Part],
           summary: dict[str, Any] | None) -> None:
    from latentmill.io.storage_errors import display_uri

    latest = _latest_run(parts, summary)
    if latest and (summary or {}).get("run_id") != latest and report.extra:
        report.notes.append(f"The latest run ({latest}) has not finished (no summary yet): objects it wrote after "
                            "its last manifest part are listed as extra until it writes that part; verify again "
                            "when it ends.")
    prefix = fs.unstrip_protocol(root).rstrip("/") + "/"
    outside = [entry.uri for entry, key in zip(named, keys) if entry.kind != "latents" and not key.startswith(prefix)]
    if outside:
        report.notes.append(f"{len(outside)} row(s) name objects outside {display_uri(fs, root)} (e.g. {outside[0]}): "
                            "output_uri is absolute, so a moved or copied folder's manifest still names the old place.")


# ---- the commands -------------------------------------------------------------------------------------


def status_command(args: argparse.Namespace) -> int:
    try:
        dest, options, input_section = _destination(args)
        report = status(dest, options, input_section)
    except InspectError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.json else report.table())
    return 0


def verify_command(args: argparse.Namespace) -> int:
    if args.threads < 1:
        print("latentmill: --threads must be at least 1", file=sys.stderr)
        return 2
    try:
        dest, options, _ = _destination(args)
        report = verify(dest, options, size_only=args.size_only, threads=args.threads)
    except InspectError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.json else report.text())
    return 0 if report.ok else 1
