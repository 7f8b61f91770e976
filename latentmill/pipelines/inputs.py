"""Find and check the prompt table on the driver, before any Ray task or model starts; read it in Ray.

Only Parquet footers are read up front (schema and row counts), so this is cheap for any table size,
also on object storage. The footers decide ONE schema for the whole table: a column present in some
files is read for every row (null where a file lacks it), and a column whose types cannot be unified
stops the job here, naming the files. The Ray read (`prompt_datasource`) then reads every file in that
schema, and turns rows it cannot read (a corrupt data page) into error rows that name the file.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from latentmill import schema

# Rows per block the Ray read yields (a file larger than this yields several blocks).
READ_BATCH_ROWS = 16_384
# A row group is read by one task: above this many rows, the job suggests smaller ones.
LARGE_ROW_GROUP_ROWS = 200_000
# Files whose footers are read at once (object storage: one round trip or two per file).
FOOTER_THREADS = 16
_LISTED = 3  # files named per type in a type-conflict message


class InputError(Exception):
    """A prompt table that cannot be used; the message names the file or column and the fix."""


@dataclass(frozen=True)
class PromptTable:
    uri: str
    files: tuple[str, ...]  # paths inside `filesystem`, in read order
    columns: tuple[str, ...]  # the columns to read: prompt, id and any override columns present
    num_rows: int
    filesystem: object  # fsspec filesystem
    # The columns' types, unified over every file (a pyarrow schema of `columns`); a file without a
    # column reads it as nulls.
    arrow_schema: Any = None
    file_bytes: tuple[int, ...] = ()  # uncompressed size of each file's data (footer estimate)
    file_row_groups: tuple[tuple[int, ...], ...] = ()  # rows of each row group of each file, in `files` order

    @property
    def file_rows(self) -> tuple[int, ...]:
        """Rows of each file, in `files` order."""
        return tuple(sum(groups) for groups in self.file_row_groups)


def _list_files(fs, path: str) -> list[str]:
    if any(char in path for char in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_"))]
    elif fs.exists(path):
        found = [path]
    else:
        found = []
    return sorted(p for p in found if not fs.isdir(p))


def inspect_table(uri: str, storage_options: dict, prompt_column: str, id_column: str,
                  extra_columns: tuple[str, ...] = ()) -> PromptTable:
    """The table's files and the columns to read: prompt, id, the override columns present in ANY file
    (the request's and `extra_columns`, the model's extra per-row parameters), with one type each."""
    from latentmill.io.storage import resolve
    from latentmill.io.storage_errors import StorageError, display_uri

    try:
        fs, path = resolve(uri, storage_options)
        files = _list_files(fs, path)
    except StorageError as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs/botocore raise many types; name the table
        raise InputError(f"cannot list the prompt table {uri!r}: {_cause(exc)}") from None
    if not files:
        raise InputError(f"no prompt table at {uri!r}: no such file, or a folder/glob with no files in it")

    footers = _read_footers(fs, files)
    wanted = tuple(dict.fromkeys([prompt_column, id_column, *schema.OVERRIDE_COLUMNS, *extra_columns]))
    types: dict[str, dict[str, list[str]]] = {}  # column -> type name -> files (for messages)
    fields: dict[str, Any] = {}  # column -> unified type so far
    conflicts: set[str] = set()
    for file, (file_schema, _, _) in zip(files, footers):
        shown = display_uri(fs, file)
        names = file_schema.names
        counts = Counter(names)
        duplicated = [name for name in names if counts[name] > 1]
        if duplicated:
            name = duplicated[0]
            raise InputError(
                f"{shown!r} has {counts[name]} columns named {name!r}; every column of a prompt table "
                "needs its own name. Rename or drop the extra column(s) and write the file again"
            )
        if prompt_column not in names:
            raise InputError(
                f"{shown!r} has no prompt column {prompt_column!r}; its columns are {names}. "
                "Pass --prompt-column NAME (input.prompt_column in the job file)"
            )
        for name in wanted:
            if name not in names:
                continue
            kind = _plain_type(file_schema.field(name).type)
            types.setdefault(name, {}).setdefault(str(kind), []).append(shown)
            if name in fields and name not in conflicts:
                merged = _merge_types(fields[name], kind, numbers=name != id_column)
                if merged is None:
                    conflicts.add(name)
                else:
                    fields[name] = merged
            else:
                fields.setdefault(name, kind)
    if conflicts:
        name = next(c for c in wanted if c in conflicts)  # the first in table order
        listing = "; ".join(f"{kind} in {_some(shown)}" for kind, shown in types[name].items())
        raise InputError(
            f"column {name!r} has different types in the files of the prompt table {uri!r}: {listing}. "
            "Give the column one type in every file (text, or numbers) and write those files again"
        )

    import pyarrow as pa

    columns = tuple(c for c in wanted if c in fields)
    return PromptTable(
        uri=uri,
        files=tuple(files),
        columns=columns,
        num_rows=sum(sum(groups) for _, groups, _ in footers),
        filesystem=fs,
        arrow_schema=pa.schema([pa.field(c, fields[c]) for c in columns]),
        file_bytes=tuple(size for _, _, size in footers),
        file_row_groups=tuple(groups for _, groups, _ in footers),
    )


def large_row_groups_warning(table: PromptTable, limit: int = LARGE_ROW_GROUP_ROWS) -> str | None:
    """Why the read of `table` cannot be spread over tasks, and the fix; None when it can."""
    from latentmill.io.storage_errors import display_uri

    large = [(file, max(groups)) for file, groups in zip(table.files, table.file_row_groups)
             if groups and max(groups) > limit]
    if not large:
        return None
    file, rows = large[0]
    return (
        f"{len(large)} file(s) of the prompt table have row groups of more than {limit:,} rows (for example "
        f"{display_uri(table.filesystem, file)!r}: {rows:,}); one task reads and validates a whole row group, "
        "so such a file cannot be read in smaller parts. Write such files with smaller row groups, e.g. "
        "pyarrow.parquet.write_table(table, path, row_group_size=10_000)"
    )


def _read_footers(fs, files: list[str]) -> list[tuple[Any, tuple[int, ...], int]]:
    """(arrow schema, rows of each row group, uncompressed bytes) of each file, from its footer; in `files`
    order."""
    if len(files) == 1:
        return [_read_footer(fs, files[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        return list(pool.map(functools.partial(_read_footer, fs), files))  # the first failure, in order


def _read_footer(fs, file: str) -> tuple[Any, tuple[int, ...], int]:
    import pyarrow.parquet as pq

    from latentmill.io.storage_errors import display_uri

    try:
        with fs.open(file, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            file_schema = metadata.schema.to_arrow_schema()
            groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
            return file_schema, tuple(g.num_rows for g in groups), sum(g.total_byte_size for g in groups)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a non-Parquet file
        raise InputError(
            f"{display_uri(fs, file)!r} is not a readable Parquet file ({_cause(exc)}); "
            "latentmill reads prompt tables in Parquet (convert CSV/TSV with pandas or pyarrow)"
        ) from None


def _cause(exc: BaseException) -> str:
    """The exception's type and text on one line (a job stop prints the last line of its cause)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _some(files: list[str]) -> str:
    shown = ", ".join(repr(f) for f in files[:_LISTED])
    return shown + (f" and {len(files) - _LISTED} more file(s)" if len(files) > _LISTED else "")


def _plain_type(kind):
    """A column's type as its values read: dictionary-encoded text (pandas categories) is text."""
    import pyarrow as pa

    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _merge_types(a, b, numbers: bool = True):
    """One type that holds the values of both, or None when they differ in kind (text vs numbers).

    All-null columns take the other type; integers of any width read as int64, floats as float64, text
    as (large) text; with `numbers`, integers and floats together read as float64 (pandas writes an
    integer column with missing values as float64). Reading checks that every value converts exactly.
    """
    import pyarrow as pa

    types = pa.types
    if a == b:
        return a
    if types.is_null(a) or types.is_null(b):
        return b if types.is_null(a) else a
    if (types.is_string(a) or types.is_large_string(a)) and (types.is_string(b) or types.is_large_string(b)):
        return pa.large_string()
    if (types.is_binary(a) or types.is_large_binary(a)) and (types.is_binary(b) or types.is_large_binary(b)):
        return pa.large_binary()
    if types.is_integer(a) and types.is_integer(b):
        return None if pa.uint64() in (a, b) else pa.int64()
    if types.is_floating(a) and types.is_floating(b):
        return pa.float64()
    if numbers and {_number_kind(a), _number_kind(b)} == {"int", "float"} and pa.uint64() not in (a, b):
        return pa.float64()
    return None


def _number_kind(kind) -> str | None:
    import pyarrow as pa

    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_floating(kind):
        return "float"
    return None


# --------------------------------------------------------------------------------------------
# Reading (inside Ray tasks)
# --------------------------------------------------------------------------------------------


def read_file(fs, file: str, arrow_schema, rows: int = 0, row_groups: range | None = None,
              first_row: int = 0) -> Iterator[Any]:
    """One file's rows (or those of its `row_groups`, the first of which is the file's row `first_row`) as
    pyarrow tables: the table's unified columns (all null where the file lacks one) plus READ_ERROR and
    READ_POSITION.

    Never raises for the file's data: rows that cannot be read (a corrupt data page, a truncated file, a
    value that does not fit the column's unified type) come out as rows with only READ_ERROR (why, naming
    the file and the fix) and READ_POSITION (`<file>#<row>`) set, which validation turns into error rows.
    A damaged row group costs its own rows only. `rows` is the row count of what is read, from the
    footer read on the driver, for a file that can no longer be opened at all.
    """
    import pyarrow.parquet as pq

    from latentmill.io.storage_errors import display_uri

    shown = display_uri(fs, file)
    try:
        handle = fs.open(file, "rb")
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs raise many types
        yield from _unreadable(arrow_schema, shown, first_row, rows, exc)
        return
    with handle:
        try:
            parquet = pq.ParquetFile(handle)
            chosen = row_groups if row_groups is not None else range(parquet.num_row_groups)
            groups = [(group, parquet.metadata.row_group(group).num_rows) for group in chosen]
            present = set(parquet.schema_arrow.names)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            yield from _unreadable(arrow_schema, shown, first_row, rows, exc)
            return
        columns = [name for name in arrow_schema.names if name in present]
        done = first_row  # the file's rows yielded so far, read or not
        for group, group_rows in groups:
            end = done + group_rows
            try:
                for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group], columns=columns):
                    block = with_read_columns(conform(batch, arrow_schema, shown))
                    done += block.num_rows
                    yield block
            except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ... for bad data
                yield from _unreadable(arrow_schema, shown, done, end - done, exc)
            done = end


# Columns the read adds to every block; set only on rows that could not be read.
READ_ERROR = "_latentmill_read_error"
READ_POSITION = "_latentmill_read_position"


def with_read_columns(table, errors=None, positions=None):
    import pyarrow as pa

    rows = table.num_rows
    return table.append_column(READ_ERROR, errors if errors is not None else pa.nulls(rows, pa.string())) \
        .append_column(READ_POSITION, positions if positions is not None else pa.nulls(rows, pa.string()))


def _unreadable(arrow_schema, shown: str, first: int, count: int, exc: BaseException) -> Iterator[Any]:
    """`count` rows from row `first` of a file that could not be read: all null but READ_ERROR and
    READ_POSITION."""
    import pyarrow as pa

    if isinstance(exc, InputError):  # a value that does not fit the column's type: the message says which
        message = f"this row could not be read: {exc}"
    else:
        message = (
            f"this row of {shown!r} could not be read: the file's data is corrupt or truncated, or its storage "
            f"failed ({_cause(exc)}). Replace the file (or move it out of the table) and re-run the same "
            "command; outputs already written are kept"
        )
    for start in range(first, first + count, READ_BATCH_ROWS):
        rows = min(READ_BATCH_ROWS, first + count - start)
        nulls = pa.table({field.name: pa.nulls(rows, field.type) for field in arrow_schema}, schema=arrow_schema)
        errors = pa.array([message] * rows, pa.string())
        positions = pa.array([f"{shown}#{row}" for row in range(start, start + rows)], pa.string())
        yield with_read_columns(nulls, errors, positions)


def conform(table, arrow_schema, file: str = ""):
    """`table` with exactly the columns and types of `arrow_schema`: missing columns all null."""
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    columns = []
    for field in arrow_schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)  # safe: a value that does not fit raises
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(
                    f"column {field.name!r} of {file!r} cannot be read as {field.type}, its type in the table's "
                    f"other files ({_cause(exc)}); give the column one type in every file"
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=arrow_schema)


def read_schema(arrow_schema):
    """The schema of the blocks the read yields: the table's columns and the two read columns."""
    import pyarrow as pa

    return arrow_schema.append(pa.field(READ_ERROR, pa.string())).append(pa.field(READ_POSITION, pa.string()))


class ReadPiece(NamedTuple):
    """Consecutive row groups of one file: what a read task reads of that file."""

    file: str
    row_groups: range
    first_row: int  # the file's row number of the first row of `row_groups`
    rows: int


def read_pieces(table: PromptTable, tasks: int) -> list[list[ReadPiece]]:
    """The table's rows, by row groups in order, cut into at most `tasks` read tasks of about equal rows.

    A large file is split between tasks by its row groups rather than read whole by one task: every
    task is then short, and its blocks' bookkeeping (in the driver, which owns the task) ends with it.
    Each cut falls at the row-group boundary nearest its share of the rows. Small files share a task.
    Files without rows are left out.
    """
    cuts = _nearest_boundaries(table, max(1, tasks))
    chosen: list[list[ReadPiece]] = []
    current: list[ReadPiece] = []
    read = 0  # the table's rows before this row group and in it
    for file, groups in zip(table.files, table.file_row_groups):
        start, first_row, rows = 0, 0, 0
        for group, group_rows in enumerate(groups):
            rows += group_rows
            read += group_rows
            if read in cuts and rows:
                cuts.discard(read)
                current.append(ReadPiece(file, range(start, group + 1), first_row, rows))
                chosen.append(current)
                current = []
                start, first_row, rows = group + 1, first_row + rows, 0
        if rows:
            current.append(ReadPiece(file, range(start, len(groups)), first_row, rows))
    if current:
        chosen.append(current)
    return chosen


def _nearest_boundaries(table: PromptTable, tasks: int) -> set[int]:
    """For each of the `tasks - 1` even shares of the table's rows, the row count after the row group
    whose end is nearest it (the earlier on a tie); never the table's end."""
    import bisect
    import itertools

    ends = list(itertools.accumulate(rows for groups in table.file_row_groups for rows in groups))
    if not ends:
        return set()
    cuts = set()
    for share in range(1, tasks):
        target = share * table.num_rows / tasks
        at = bisect.bisect_left(ends, target)
        near = [ends[i] for i in (at - 1, at) if 0 <= i < len(ends)]
        cuts.add(min(near, key=lambda end: (abs(end - target), end)))
    return cuts - {0, table.num_rows}


def _read_pieces(fs, pieces: tuple[ReadPiece, ...], arrow_schema) -> Iterator[Any]:
    for piece in pieces:
        yield from read_file(fs, piece.file, arrow_schema, piece.rows, piece.row_groups, piece.first_row)


def prompt_datasource(table: PromptTable):
    """A Ray Data datasource reading `table` in its unified schema (operator name: ReadParquet)."""
    return _datasource_class()(table)


@functools.cache
def _datasource_class():
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class ParquetDatasource(Datasource):
        """The prompt table's row groups, in order, in at most `parallelism` read tasks (`read_pieces`).

        The files' footers were read on the driver, so planning reads nothing: no footer-reader
        actors, no sampling task (a corrupt file's rows become error rows in its read task).
        """

        def __init__(self, table: PromptTable) -> None:
            super().__init__()
            self.table = table

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(self.table.file_bytes) or None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context=None) -> list:
            table = self.table
            bytes_per_row = {file: size / max(1, rows)
                             for file, size, rows in zip(table.files, table.file_bytes, table.file_rows)}
            tasks = []
            for pieces in read_pieces(table, parallelism):
                files = tuple(dict.fromkeys(piece.file for piece in pieces))
                metadata = BlockMetadata(
                    num_rows=sum(piece.rows for piece in pieces),
                    size_bytes=int(sum(bytes_per_row[piece.file] * piece.rows for piece in pieces)),
                    input_files=files,
                    exec_stats=None,
                )
                read = functools.partial(_read_pieces, table.filesystem, tuple(pieces), table.arrow_schema)
                tasks.append(ReadTask(read, metadata, schema=read_schema(table.arrow_schema),
                                      per_task_row_limit=per_task_row_limit))
            return tasks

    return ParquetDatasource
