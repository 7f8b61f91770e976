"""Find and check the prompt table on the driver, before any Ray task or model starts.

Only Parquet footers are read here (schema and row counts), so this is cheap for any table size.
"""

from __future__ import annotations

from dataclasses import dataclass

from latentmill import schema


class InputError(Exception):
    """A prompt table that cannot be used; the message names the file or column and the fix."""


@dataclass(frozen=True)
class PromptTable:
    uri: str
    files: tuple[str, ...]  # paths inside `filesystem`, in read order
    columns: tuple[str, ...]  # the columns to read: prompt, id and any override columns present
    num_rows: int
    filesystem: object  # fsspec filesystem


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
    """The table's files and the columns to read: prompt, id, the override columns present (the
    request's and `extra_columns`, the model's extra per-row parameters)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentmill.io.storage import StorageError, resolve

    try:
        fs, path = resolve(uri, storage_options)
        files = _list_files(fs, path)
    except StorageError as exc:
        raise InputError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot list the prompt table {uri!r}: {exc}") from None
    if not files:
        raise InputError(f"no prompt table at {uri!r}: no such file, or a folder/glob with no files in it")

    names: list[str] | None = None
    unified = None
    total = 0
    for file in files:
        try:
            with fs.open(file, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
                file_schema = metadata.schema.to_arrow_schema()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a non-Parquet file
            raise InputError(
                f"{file!r} is not a readable Parquet file ({type(exc).__name__}: {exc}); "
                "latentmill reads prompt tables in Parquet (convert CSV/TSV with pandas or pyarrow)"
            ) from None
        if prompt_column not in file_schema.names:
            raise InputError(
                f"{file!r} has no prompt column {prompt_column!r}; its columns are {file_schema.names}. "
                "Pass --prompt-column NAME (input.prompt_column in the job file)"
            )
        names = names or file_schema.names
        total += metadata.num_rows
        # Ray Data unifies the files' schemas when it reads them; a column whose types cannot be
        # unified (text in one file, integers in another) would stop the job deep inside Ray.
        try:
            unified = file_schema if unified is None else pa.unify_schemas(
                [unified, file_schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise InputError(
                f"{file!r} does not match the table's other files ({exc}); every file of a prompt table "
                "needs the same column types"
            ) from None

    wanted = [prompt_column, id_column, *schema.OVERRIDE_COLUMNS, *extra_columns]
    columns = tuple(dict.fromkeys(c for c in wanted if c in (names or [])))
    return PromptTable(uri=uri, files=tuple(files), columns=columns, num_rows=total, filesystem=fs)
