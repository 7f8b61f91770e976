"""Output stores: where a run's media and manifest rows go, and what a re-run finds already done.

Every layout has the same life cycle. The driver opens the store and `resume`s it (what earlier runs
committed; leftovers of a crash are removed); decode actors put each sample's media under
`media_folder(layout)`; the driver `add`s the manifest rows of samples whose media are written, and `commit`s.
A sample counts as done only once committed, so a crash at any point loses work but never duplicates it.

- `files`: one object per sample under media/, manifest rows in Parquet parts under manifest/ (a part
  is written after its media; a row whose object is missing or changed is generated again).
- `webdataset`: tar shards shards/NNNNN.tar holding {key}.{ext}, {key}.json (the manifest row) and
  {key}.txt (the prompt), each with a sidecar NNNNN.parquet (its manifest rows) and NNNNN_stats.json.
- `parquet`: shards shards/NNNNN.parquet holding the manifest rows and the media bytes in a
  {bytes, path} struct column (what Hugging Face `datasets` reads as an Image), with NNNNN_stats.json.

A shard is assembled on the driver from the media the decode actors staged under staging/, and written
as whole objects: the data file (streamed through a local temporary file, a tar member by member and a
parquet shard row group by row group, and uploaded from it, as a multipart upload when large), its
stats, then the sidecar Parquet last (a parquet shard is its own sidecar, written after its stats). The
sidecar is the commit marker: a shard without one was never committed, and resume deletes it and the
staged media, so those samples are generated again (into a new shard).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from latentmill import schema
from latentmill.io import storage
from latentmill.io.perceptual import count_pairs

log = logging.getLogger(__name__)

SHARDS = "shards"
STAGING = "staging"
# What a shard store writes under shards/ (and a local write's temporary file of it): NNNNN.tar,
# NNNNN.parquet, NNNNN_stats.json.
SHARD_FILE = re.compile(r"\.?(\d{5,})(?:\.tar|\.parquet|_stats\.json)(?:\..+\.tmp)?")
STILL_IMAGES = ("image/png", "image/jpeg", "image/webp")
HF_FEATURES_KEY = b"huggingface"  # Parquet schema metadata from which `datasets` restores column types
READ_AHEAD = 32  # staged media objects read at once while a shard is assembled


@dataclass
class OutputState:
    done: dict[str, str] = field(default_factory=dict)  # id -> sha256 of a committed, verified output
    stale: int = 0  # manifest rows whose object is missing or changed: generated again
    manifest_parts: list[str] = field(default_factory=list)
    error_parts: list[str] = field(default_factory=list)


def media_folder(layout: str) -> str:
    """Where the decode actors put each sample's media: final for `files`, staged for shard layouts."""
    return "media" if layout == "files" else STAGING


def read_table(fs, path: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(fs, path)))


def list_parts(fs, folder: str, pattern: str = r".*\.parquet") -> list[str]:
    try:
        return sorted(p for p in fs.find(folder) if p.rstrip("/") != folder.rstrip("/")
                      and re.fullmatch(pattern, p.rsplit("/", 1)[-1]))
    except FileNotFoundError:
        return []


class ParquetParts:
    """Rows written as Parquet parts `<folder>/part-<run_id>-NNNNN.parquet`: every `rows_per_part` rows,
    and at least every `flush_seconds`, so a crash loses little."""

    def __init__(self, fs, folder: str, run_id: str, columns: tuple[str, ...], rows_per_part: int,
                 flush_seconds: float) -> None:
        self.fs, self.folder, self.run_id, self.columns = fs, folder, run_id, columns
        self.rows_per_part, self.flush_seconds = rows_per_part, flush_seconds
        self.pending: list[dict[str, Any]] = []
        self.parts = 0
        self.last_flush = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.pending += rows
        if len(self.pending) >= self.rows_per_part or self.overdue():
            self.flush()

    def overdue(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.last_flush > self.flush_seconds

    def flush(self) -> None:
        import pyarrow as pa

        if not self.pending:
            return
        name = f"part-{self.run_id}-{self.parts:05d}.parquet"
        table = pa.Table.from_pylist(self.pending).select(list(self.columns))
        storage.put_bytes(self.fs, storage.join(self.folder, name), _parquet_bytes(table))
        self.parts += 1
        self.pending = []
        self.last_flush = time.monotonic()


class OutputStore:
    """The driver's side of a layout (see the module docstring); the decode actors' side is where they put
    media, `media_folder(layout)`."""

    layout: str

    def __init__(self, fs, root: str, uri: str, run_id: str, columns: tuple[str, ...]) -> None:
        self.fs, self.root, self.uri, self.run_id, self.columns = fs, root, uri, run_id, columns

    def resume(self, verify: str) -> OutputState:
        """What earlier runs committed; removes what they left uncommitted."""
        raise NotImplementedError

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Manifest rows of samples whose media the decode actors have written."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make every added row durable (at the end of a run, and when a run stops on an error)."""
        raise NotImplementedError

    def manifest_files(self) -> list[str]:
        """The Parquet files holding the manifest rows of every committed sample."""
        raise NotImplementedError


class FileStore(OutputStore):
    """One object per sample under media/; manifest rows in Parquet parts under manifest/."""

    layout = "files"

    def __init__(self, fs, root: str, uri: str, run_id: str, columns: tuple[str, ...], rows_per_part: int = 1000,
                 flush_seconds: float = 30.0) -> None:
        super().__init__(fs, root, uri, run_id, columns)
        self.parts = ParquetParts(fs, storage.join(root, "manifest"), run_id, columns, rows_per_part, flush_seconds)

    def resume(self, verify: str, threads: int = 16) -> OutputState:
        state = load_output_state(self.fs, self.root, verify, threads)
        if state.stale:  # parts whose every row named a missing object were rewritten empty
            _remove_empty_parts(self.fs, state)
        return state

    def add(self, rows):
        self.parts.add(rows)

    def commit(self):
        self.parts.flush()

    def manifest_files(self):
        return list_parts(self.fs, storage.join(self.root, "manifest"))


class ShardStore(OutputStore):
    """Samples grouped into shards of `shard_size`, each committed by its sidecar (module docstring)."""

    def __init__(self, fs, root: str, uri: str, run_id: str, columns: tuple[str, ...], layout: str,
                 shard_size: int = 1000, near_duplicate_distance: int = 4) -> None:
        super().__init__(fs, root, uri, run_id, (*columns, schema.SHARD_KEY))
        self.layout, self.shard_size = layout, shard_size
        self.near_duplicate_distance = near_duplicate_distance
        self.pending: list[dict[str, Any]] = []
        self.next_shard = 0

    def resume(self, verify: str) -> OutputState:
        """Committed shards' rows are done; an uncommitted shard and staged media are removed.

        Committed means the sidecar exists (and, for webdataset, its tar). `verify` does not apply: a
        shard is written as one object, so a committed shard is complete.
        """
        folder = storage.join(self.root, SHARDS)
        files = {path.rsplit("/", 1)[-1]: path for path in list_parts(self.fs, folder, SHARD_FILE.pattern)}
        committed = sorted(name[:-len(".parquet")] for name in files
                           if re.fullmatch(r"\d{5,}\.parquet", name)
                           and (self.layout == "parquet" or name.replace(".parquet", ".tar") in files))
        leftovers = [path for name, path in files.items()
                     if name.endswith(".tmp") or SHARD_FILE.fullmatch(name)[1] not in committed]
        for path in leftovers:
            self.fs.rm_file(path)
        staged = list_parts(self.fs, storage.join(self.root, STAGING), r"[^/]+\.[^/]+")
        for path in staged:
            self.fs.rm_file(path)
        if leftovers or staged:
            log.warning("removed %d uncommitted shard file(s) and %d staged media object(s) of an earlier run; "
                        "their samples are generated again", len(leftovers), len(staged))
        state = OutputState(error_parts=list_parts(self.fs, storage.join(self.root, "errors")))
        for shard in committed:
            table = read_table(self.fs, files[f"{shard}.parquet"]).select([schema.ID, schema.SHA256])
            state.done.update(zip(table[schema.ID].to_pylist(), table[schema.SHA256].to_pylist()))
        self.next_shard = int(committed[-1]) + 1 if committed else 0
        return state

    def add(self, rows):
        self.pending += rows
        while len(self.pending) >= self.shard_size:
            self._write_shard(self.pending[:self.shard_size])
            self.pending = self.pending[self.shard_size:]

    def commit(self):
        if self.pending:
            self._write_shard(self.pending)
            self.pending = []

    def manifest_files(self):
        return list_parts(self.fs, storage.join(self.root, SHARDS), r"\d{5,}\.parquet")

    def _write_shard(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        name = f"{self.next_shard:05d}"
        folder = storage.join(self.root, SHARDS)
        staged = [storage.join(self.root, STAGING, row[schema.OUTPUT_URI].rsplit("/", 1)[-1]) for row in rows]
        data_name = f"{name}.tar" if self.layout == "webdataset" else f"{name}.parquet"
        rows = [{**row, schema.SHARD_KEY: shard_key(row[schema.ID]), schema.OUTPUT_URI: storage.join(self.uri, SHARDS, data_name)}
                for row in rows]
        table = pa.Table.from_pylist(rows).select(list(self.columns))
        # The data file is written into a local temporary file, a few staged objects at a time, and uploaded
        # from there (a multipart upload when large): a shard of any size never sits in the driver's memory.
        with tempfile.TemporaryDirectory(prefix="latentmill-shard-") as scratch:
            local = os.path.join(scratch, data_name)
            if self.layout == "webdataset":
                media_bytes = self._write_tar(local, rows, staged)
                storage.put_file(self.fs, local, storage.join(folder, data_name))
            else:
                media_bytes = self._write_parquet(local, table, rows, staged)
            stats = {"shard": name, "layout": self.layout, "samples": len(rows), "media_bytes": media_bytes,
                     "near_duplicate_pairs": count_pairs([row.get(schema.PHASH) for row in rows],
                                                         self.near_duplicate_distance),
                     "near_duplicate_distance": self.near_duplicate_distance, "run_id": self.run_id}
            storage.put_bytes(self.fs, storage.join(folder, f"{name}_stats.json"),
                              json.dumps(stats, indent=2).encode())
            # The commit: the sidecar (webdataset), or the shard itself (parquet).
            if self.layout == "webdataset":
                storage.put_bytes(self.fs, storage.join(folder, f"{name}.parquet"), _parquet_bytes(table))
            else:
                storage.put_file(self.fs, local, storage.join(folder, data_name))
        self.next_shard += 1
        for path in staged:
            self.fs.rm_file(path)

    def _read_staged(self, staged: list[str]):
        """The staged media, READ_AHEAD objects at a time (read in parallel, in order)."""
        with ThreadPoolExecutor(max_workers=16) as pool:
            for start in range(0, len(staged), READ_AHEAD):
                yield list(pool.map(lambda path: storage.read_bytes(self.fs, path), staged[start:start + READ_AHEAD]))

    def _write_tar(self, local: str, rows: list[dict[str, Any]], staged: list[str]) -> int:
        """Write a WebDataset shard to the local file `local`; returns its media bytes."""
        media_bytes = 0
        with open(local, "wb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
            position = 0
            for chunk in self._read_staged(staged):
                for data in chunk:
                    _add_sample(tar, rows[position], data)
                    media_bytes += len(data)
                    position += 1
        return media_bytes

    def _write_parquet(self, local: str, table, rows: list[dict[str, Any]], staged: list[str]) -> int:
        """Write a parquet shard to the local file `local`, one row group per READ_AHEAD samples (their
        manifest rows and media); returns its media bytes."""
        import pyarrow.parquet as pq

        image = rows[0][schema.MIME_TYPE] in STILL_IMAGES
        media_bytes, position, writer = 0, 0, None
        try:
            for chunk in self._read_staged(staged):
                end = position + len(chunk)
                group = _with_media_column(table.slice(position, len(chunk)), rows[position:end], chunk, image)
                if writer is None:  # every group has this schema (and the `datasets` metadata)
                    writer = pq.ParquetWriter(local, group.schema)
                writer.write_table(group)
                media_bytes += sum(map(len, chunk))
                position = end
        finally:
            if writer is not None:
                writer.close()
        return media_bytes


def open_store(layout: str, fs, root: str, uri: str, run_id: str, columns: tuple[str, ...], *, shard_size: int,
               rows_per_part: int, flush_seconds: float, near_duplicate_distance: int = 4) -> OutputStore:
    if layout == "files":
        return FileStore(fs, root, uri, run_id, columns, rows_per_part, flush_seconds)
    return ShardStore(fs, root, uri, run_id, columns, layout, shard_size, near_duplicate_distance)


def shard_key(row_id: str) -> str:
    """A sample's key in a shard: its object key, without dots (WebDataset splits a name at its first dot)."""
    key = storage.safe_key(row_id)
    if "." not in key:
        return key
    return f"{key.replace('.', '_')[:87]}-{hashlib.sha256(row_id.encode()).hexdigest()[:12]}"


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _add_sample(tar: tarfile.TarFile, row: dict[str, Any], data: bytes) -> None:
    """One sample of a WebDataset shard: {key}.{ext}, {key}.json (its manifest row), {key}.txt (its prompt)."""
    key = row[schema.SHARD_KEY]
    extension = row[schema.MIME_TYPE].split("/")[-1].replace("jpeg", "jpg")
    members = {extension: data, "json": json.dumps(row, ensure_ascii=False, default=str).encode(),
               "txt": row[schema.PROMPT].encode()}
    for suffix, payload in members.items():
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))


def _with_media_column(table, rows: list[dict[str, Any]], media: list[bytes], image: bool):
    """The manifest rows plus their media as a {bytes, path} struct: `image` (which Hugging Face `datasets`
    reads as an Image column, told so by the schema's metadata) or `video`."""
    import pyarrow as pa

    column = schema.SHARD_MEDIA["image" if image else "video"]
    paths = [f"{row[schema.SHARD_KEY]}.{row[schema.MIME_TYPE].split('/')[-1]}" for row in rows]
    struct = pa.StructArray.from_arrays([pa.array(media, pa.binary()), pa.array(paths, pa.string())],
                                        names=["bytes", "path"])
    table = table.append_column(column, struct)
    if image:
        features = {name: {"dtype": _hf_dtype(table.schema.field(name).type), "_type": "Value"}
                    for name in table.column_names if name != column}
        features[column] = {"_type": "Image"}
        table = table.replace_schema_metadata({HF_FEATURES_KEY: json.dumps({"info": {"features": features}})})
    return table


def _hf_dtype(kind) -> str:
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(kind), str(kind))


# ---- the files layout's resume --------------------------------------------------------------------


def load_output_state(fs, root: str, verify: str = "sha256", threads: int = 16) -> OutputState:
    """Read the manifest parts and check each named object; `verify` is "sha256" or "size".

    A row counts as done when a manifest row names it and its object is there with the manifest's
    sha256. Manifest parts are written only after their media, so the manifest never names a missing
    object unless the object was removed afterwards (then the row is generated again).
    """
    state = OutputState(
        manifest_parts=list_parts(fs, storage.join(root, "manifest")),
        error_parts=list_parts(fs, storage.join(root, "errors")),
    )
    rows: dict[str, dict[str, Any]] = {}
    tables = {}
    for part in state.manifest_parts:
        tables[part] = read_table(fs, part)
        columns = [schema.ID, schema.OUTPUT_URI, schema.SHA256, schema.BYTES]
        if schema.LATENTS_SHA256 in tables[part].column_names:  # saved latents: part of the row's output
            columns += [schema.LATENTS_URI, schema.LATENTS_SHA256]
        for row in tables[part].select(columns).to_pylist():
            rows[row[schema.ID]] = row

    def intact(row: dict[str, Any]) -> bool:
        object_fs, path = storage.resolve(row[schema.OUTPUT_URI], fs.storage_options)
        try:
            if row.get(schema.LATENTS_SHA256):
                latents_fs, latents_path = storage.resolve(row[schema.LATENTS_URI], fs.storage_options)
                if verify == "size":
                    latents_fs.size(latents_path)
                elif (hashlib.sha256(storage.read_bytes(latents_fs, latents_path)).hexdigest()
                      != row[schema.LATENTS_SHA256]):
                    return False
            if verify == "size":
                return object_fs.size(path) == row[schema.BYTES]
            return hashlib.sha256(storage.read_bytes(object_fs, path)).hexdigest() == row[schema.SHA256]
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

    for part, table in tables.items():
        keep = pc.invert(pc.is_in(table[schema.ID], value_set=pa.array(sorted(ids), type=pa.string())))
        if pc.all(keep).as_py():
            continue
        storage.put_bytes(fs, part, _parquet_bytes(table.filter(keep)))


def _remove_empty_parts(fs, state: OutputState) -> None:
    import pyarrow.parquet as pq

    kept = []
    for part in state.manifest_parts:
        with fs.open(part, "rb") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        if rows:
            kept.append(part)
        else:
            fs.rm_file(part)
    state.manifest_parts = kept
