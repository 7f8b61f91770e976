"""`latentmill report`: one static HTML page that shows what runs wrote into an output.

The page (``DEST/report/index.html``) needs no network and no server: CSS, JS and plots are inline, and
thumbnails are small JPEGs in ``report/thumbs/`` next to it, referenced relatively, as are the media
objects (videos play from ``../media/<key>.mp4``). It works opened from local disk and served from the
bucket the output lives in. Large outputs are sampled deterministically (``max_items``).

    >>> from latentmill.report import build_report
    >>> build_report(["out/demo"]).index_uri
    '/home/me/out/demo/report/index.html'

No Ray, no torch: it reads Parquet parts, JSON files and media objects through latentmill.io.storage.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from latentmill import schema
from latentmill.report.collect import (THUMB_FOLDER, Output, ReportError, deterministic_sample, listing,
                                       normalize_uri, read_output, relative_link, thumb_name, thumbnail)
from latentmill.report.render import CompareView, Item, OutputView, render_page

__all__ = ["DEFAULT_MAX_ITEMS", "ReportError", "ReportResult", "build_report", "storage_options_from"]

log = logging.getLogger(__name__)

DEFAULT_MAX_ITEMS = 500
THUMB_SIZE = 256


@dataclass
class ReportResult:
    index_uri: str
    outputs: int  # outputs (folders) reported on
    items: int  # gallery cards over all outputs
    sampled: bool  # some output had more rows than max_items
    thumbnails_made: int
    thumbnails_reused: int
    thumbnail_failures: int

    def line(self) -> str:
        sample = " (a deterministic sample)" if self.sampled else ""
        failed = f", {self.thumbnail_failures} media unreadable" if self.thumbnail_failures else ""
        return (f"{self.items} output(s){sample} from {self.outputs} output folder(s); thumbnails: "
                f"{self.thumbnails_made} made, {self.thumbnails_reused} reused{failed}")


def build_report(outputs: list[str] | str, report_uri: str | None = None, max_items: int = DEFAULT_MAX_ITEMS,
                 storage_options: dict[str, Any] | None = None, threads: int = 8) -> ReportResult:
    """Write the report of `outputs` (output folders or URIs; two or more of one prompt table get a
    side-by-side view by row id) to `report_uri` (default: the first output's report/ folder).

    Raises ReportError when an output cannot be read or the report cannot be written.
    """
    from latentmill.io import storage
    from latentmill.io.storage_errors import display_uri

    if isinstance(outputs, str):
        outputs = [outputs]
    if not outputs:
        raise ValueError("name at least one output")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
    read = [read_output(uri, storage_options) for uri in outputs]
    report_uri = normalize_uri(report_uri) if report_uri else storage.join(read[0].uri, "report")
    try:
        report_fs, report_root = storage.resolve(report_uri, storage_options)
    except storage.StorageError as exc:
        raise ReportError(str(exc)) from None

    def item(output: Output, row: dict[str, Any]) -> Item:
        media = output.media_uri(row.get(schema.OUTPUT_URI))
        mime = str(row.get(schema.MIME_TYPE) or (storage.content_type(media) if media else ""))
        return Item(row=row, media_uri=media, video=mime.startswith("video/") or mime == "image/apng",
                    link=relative_link(report_fs, report_root, media, storage_options) if media else None)

    views = []
    for output in read:
        ids = _ids(output.manifest)
        chosen = deterministic_sample(ids, max_items)
        rows = _rows(output.manifest, chosen)
        views.append(OutputView(output=output, items=[item(output, row) for row in rows],
                                sampled=len(chosen) < len(set(ids))))
    compare = None
    if len(read) > 1:
        compare = _compare(read, views, max_items, item)

    made, reused, failures = _thumbnails(views, compare, report_fs, report_root, storage_options, threads)
    html = render_page(views, compare, max_items)
    index = storage.join(report_root, "index.html")
    try:
        storage.put_bytes(report_fs, index, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    except storage.StorageError as exc:
        raise ReportError(str(exc)) from None
    return ReportResult(index_uri=display_uri(report_fs, index), outputs=len(read),
                        items=sum(len(view.items) for view in views),
                        sampled=any(view.sampled for view in views) or bool(compare and compare.sampled),
                        thumbnails_made=made, thumbnails_reused=reused, thumbnail_failures=failures)


def storage_options_from(job_file) -> dict[str, Any]:
    """The fsspec options of a job file's `storage:` section (the rest of the file is not read, so the
    run's own job file serves). Raises ConfigError naming the file and the field."""
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from latentmill.config import ConfigError, StorageSettings

    try:
        loaded = yaml.safe_load(Path(job_file).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read job file {job_file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"job file {job_file} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("storage") or {}, dict):
        raise ConfigError(f"job file {job_file}: expected a mapping with a `storage:` section")
    try:
        return StorageSettings.model_validate(loaded.get("storage") or {}).fsspec_options()
    except ValidationError as exc:
        fields = "; ".join(f"storage.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
        raise ConfigError(f"job file {job_file}: {fields}") from None


def _ids(table) -> list[str]:
    if table is None or schema.ID not in table.column_names:
        return []
    return [str(value) for value in table[schema.ID].to_pylist()]


def _rows(table, chosen: set[str]) -> list[dict[str, Any]]:
    """The manifest rows of the chosen ids, in manifest order (parts by name, rows as written)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table is None or not chosen:
        return []
    ids = pc.cast(table[schema.ID], pa.string())
    return table.filter(pc.is_in(ids, value_set=pa.array(sorted(chosen), type=pa.string()))).to_pylist()


def _compare(read: list[Output], views: list[OutputView], max_items: int, item) -> CompareView:
    """Every row id of any output (outputs and error rows), sampled like the galleries."""
    errors: list[dict[str, dict[str, Any]]] = []
    every: set[str] = set()
    for output in read:
        every.update(_ids(output.manifest))
        failed = {str(row[schema.ID]): row for row in (output.errors.to_pylist() if output.errors is not None else [])}
        errors.append(failed)
        every.update(failed)
    chosen = deterministic_sample(list(every), max_items)
    cells: dict[str, list[tuple[str, Any]]] = {row_id: [] for row_id in chosen}
    for output, view, failed in zip(read, views, errors):
        # The gallery's items where the samples agree (they do for outputs of one prompt table).
        known = {str(entry.row.get(schema.ID)): entry for entry in view.items}
        missing = chosen - known.keys()
        for row in _rows(output.manifest, missing):
            known[str(row.get(schema.ID))] = item(output, row)
        for row_id in chosen:
            if row_id in known:
                cells[row_id].append(("ok", known[row_id]))
            elif row_id in failed:
                cells[row_id].append(("failed", failed[row_id]))
            else:
                cells[row_id].append(("missing", None))
    return CompareView(ids=sorted(chosen), total_ids=len(every), sampled=len(chosen) < len(every), cells=cells)


def _thumbnails(views: list[OutputView], compare: CompareView | None, report_fs, report_root: str,
                storage_options: dict[str, Any] | None, threads: int) -> tuple[int, int, int]:
    """Make the thumbnails the page shows that report/thumbs/ does not hold yet; set each item's
    thumb (or thumb_error). Returns (made, reused, failed)."""
    from latentmill.io import storage

    items = [entry for view in views for entry in view.items]
    if compare is not None:
        items += [value for cells in compare.cells.values() for kind, value in cells if kind == "ok"]
    folder = storage.join(report_root, THUMB_FOLDER)
    existing = {path.rsplit("/", 1)[-1]: path for path in listing(report_fs, folder, ".jpg")}
    wanted: dict[str, list[Item]] = {}
    for entry in items:
        if entry.media_uri:
            wanted.setdefault(thumb_name(entry.row), []).append(entry)
        else:
            entry.thumb_error = "the manifest row names no media object"

    def make(name: str) -> str | None:
        entry = wanted[name][0]
        try:
            fs, path = storage.resolve(entry.media_uri, storage_options)
            data = storage.read_bytes(fs, path)
        except FileNotFoundError:
            return f"media object missing: {entry.media_uri}"
        except Exception as exc:  # noqa: BLE001 - one unreadable object must not stop the report
            return f"media object unreadable: {type(exc).__name__}: {exc}"
        mime = str(entry.row.get(schema.MIME_TYPE) or storage.content_type(path))
        try:
            small = thumbnail(data, mime, THUMB_SIZE)
        except Exception as exc:  # noqa: BLE001 - a damaged file: say so on its card
            return f"cannot decode {mime}: {type(exc).__name__}: {exc}"
        try:
            storage.put_bytes(report_fs, storage.join(folder, name), small, content_type="image/jpeg")
        except storage.StorageError as exc:
            raise ReportError(f"cannot write the report's thumbnails: {exc}") from None
        return None

    todo = sorted(name for name in wanted if name not in existing)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = dict(zip(todo, pool.map(make, todo)))
    failures = 0
    for name, entries in wanted.items():
        problem = results.get(name)
        failures += problem is not None
        for entry in entries:
            if problem is None:
                entry.thumb = f"{THUMB_FOLDER}/{name}"
            else:
                entry.thumb_error = problem
    # Thumbnails of media the page no longer shows (regenerated outputs, another sample) go.
    for name, path in existing.items():
        if name not in wanted and re.fullmatch(r"[0-9a-f]{32}\.jpg", name):
            try:
                report_fs.rm_file(path)
            except OSError as exc:
                log.warning("could not remove the unused thumbnail %s: %s", path, exc)
    return len(todo) - failures, len(wanted) - len(todo), failures
