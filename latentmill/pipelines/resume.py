"""What an output folder already holds, so that re-running a job finishes it exactly once.

The folder records the job's fingerprint in `_latentmill_job.json`; a different job is refused.
A row counts as done when a manifest row names it and its object is there with the manifest's
sha256. Manifest parts are written only after their media, so the manifest never names a missing
object unless the object was removed afterwards (then the row is generated again).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from latentmill import schema

log = logging.getLogger(__name__)

JOB_RECORD = "_latentmill_job.json"


class OutputConflict(Exception):
    """The output folder belongs to a different job."""


@dataclass
class OutputState:
    done: dict[str, str] = field(default_factory=dict)  # id -> sha256 of a verified object
    stale: int = 0  # manifest rows whose object is missing or changed: generated again
    manifest_parts: list[str] = field(default_factory=list)
    error_parts: list[str] = field(default_factory=list)


def _read_table(fs, path: str):
    import pyarrow.parquet as pq

    from latentmill.io.storage import read_bytes

    return pq.read_table(io.BytesIO(read_bytes(fs, path)))


def _list_parts(fs, folder: str) -> list[str]:
    try:
        return sorted(p for p in fs.find(folder) if p.endswith(".parquet"))
    except FileNotFoundError:
        return []


def check_job_record(fs, root: str, fingerprint: str, description: dict[str, Any]) -> bool:
    """Refuse a folder made by a different job; returns whether this is a resumed run."""
    from latentmill.io.storage import join, put_bytes, read_bytes

    path = join(root, JOB_RECORD)
    if fs.exists(path):
        record = json.loads(read_bytes(fs, path))
        if record.get("fingerprint") != fingerprint:
            raise OutputConflict(
                f"the output {description['output']} holds results of a different job "
                f"(fingerprint {record.get('fingerprint')}, this job is {fingerprint}: the model, generation "
                "defaults, limits, formats or input differ). Write to a new output, or delete that folder to "
                "start over; re-running the original command resumes it"
            )
        return True
    put_bytes(fs, path, json.dumps({"fingerprint": fingerprint, **description}, indent=2, default=str).encode())
    return False


def load_output_state(fs, root: str, verify: str = "sha256", threads: int = 16) -> OutputState:
    """Read the manifest and check each named object; `verify` is "sha256" or "size"."""
    from latentmill.io.storage import join, read_bytes, resolve

    state = OutputState(
        manifest_parts=_list_parts(fs, join(root, "manifest")),
        error_parts=_list_parts(fs, join(root, "errors")),
    )
    rows: dict[str, dict[str, Any]] = {}
    tables = {}
    for part in state.manifest_parts:
        tables[part] = _read_table(fs, part)
        columns = [schema.ID, schema.OUTPUT_URI, schema.SHA256, schema.BYTES]
        if schema.LATENTS_SHA256 in tables[part].column_names:  # saved latents: part of the row's output
            columns += [schema.LATENTS_URI, schema.LATENTS_SHA256]
        for row in tables[part].select(columns).to_pylist():
            rows[row[schema.ID]] = row

    def intact(row: dict[str, Any]) -> bool:
        object_fs, path = resolve(row[schema.OUTPUT_URI], fs.storage_options)
        try:
            if row.get(schema.LATENTS_SHA256):
                latents_fs, latents_path = resolve(row[schema.LATENTS_URI], fs.storage_options)
                if verify == "size":
                    latents_fs.size(latents_path)
                elif hashlib.sha256(read_bytes(latents_fs, latents_path)).hexdigest() != row[schema.LATENTS_SHA256]:
                    return False
            if verify == "size":
                return object_fs.size(path) == row[schema.BYTES]
            return hashlib.sha256(read_bytes(object_fs, path)).hexdigest() == row[schema.SHA256]
        except FileNotFoundError:
            return False

    with ThreadPoolExecutor(max_workers=threads) as pool:
        checks = dict(zip(rows, pool.map(intact, rows.values())))
    state.done = {row_id: rows[row_id][schema.SHA256] for row_id, ok in checks.items() if ok}
    stale = {row_id for row_id, ok in checks.items() if not ok}
    state.stale = len(stale)
    if stale:
        log.warning("%d manifest row(s) name a missing or changed object; generating them again", len(stale))
        _drop_manifest_rows(fs, tables, stale)
    return state


def _drop_manifest_rows(fs, tables: dict[str, Any], ids: set[str]) -> None:
    """Rewrite the parts that name `ids`, so a regenerated row never has two manifest rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from latentmill.io.storage import put_bytes

    for part, table in tables.items():
        keep = pc.invert(pc.is_in(table[schema.ID], value_set=pa.array(sorted(ids), type=pa.string())))
        if pc.all(keep).as_py():
            continue
        buffer = io.BytesIO()
        pq.write_table(table.filter(keep), buffer)
        put_bytes(fs, part, buffer.getvalue())
