"""The prompt table's one schema over many files, and its read: no Ray started, no model."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.pipelines.inputs import (
    READ_ERROR,
    READ_POSITION,
    InputError,
    inspect_table,
    large_row_groups_warning,
    prompt_datasource,
    read_file,
    read_schema,
)


def write(folder, files: dict[str, pa.Table], **kwargs):
    folder.mkdir(exist_ok=True)
    for name, table in files.items():
        pq.write_table(table, folder / name, **kwargs)
    return folder


def inspect(folder, extra=()):
    return inspect_table(str(folder), {}, "prompt", "id", tuple(extra))


def read_all(table) -> pa.Table:
    blocks = [block for file, rows in zip(table.files, table.file_rows)
              for block in read_file(table.filesystem, file, table.arrow_schema, rows)]
    return pa.concat_tables(blocks)


def test_a_column_of_any_file_is_read_for_every_row(tmp_path):
    """The first file has only prompts; later files add ids and overrides (once dropped silently)."""
    folder = write(tmp_path / "t", {
        "a.parquet": pa.table({"prompt": ["p0", "p1"]}),
        "b.parquet": pa.table({"prompt": ["p2"], "id": ["two"], "height": pa.array([32], pa.int32())}),
        "c.parquet": pa.table({"prompt": ["p3"], "seed": [7], "caption": ["not read"]}),
    })
    table = inspect(folder)
    assert table.columns == ("prompt", "id", "seed", "height")  # every override present in any file
    assert table.arrow_schema == pa.schema({"prompt": pa.string(), "id": pa.string(), "seed": pa.int64(),
                                            "height": pa.int32()})  # one file's type: nothing to unify
    assert (table.num_rows, table.file_rows) == (4, (2, 1, 1))
    rows = read_all(table)
    assert rows.schema == read_schema(table.arrow_schema)
    assert rows.drop_columns([READ_ERROR, READ_POSITION]).to_pylist() == [
        {"prompt": "p0", "id": None, "seed": None, "height": None},
        {"prompt": "p1", "id": None, "seed": None, "height": None},
        {"prompt": "p2", "id": "two", "seed": None, "height": 32},
        {"prompt": "p3", "id": None, "seed": 7, "height": None},
    ]
    assert rows.column(READ_ERROR).null_count == rows.num_rows


def test_a_later_file_without_the_first_files_columns_reads_nulls(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p0"], "id": ["zero"], "height": [32]}),
                                    "b.parquet": pa.table({"prompt": ["p1"]})})
    rows = read_all(inspect(folder)).select(["prompt", "id", "height"]).to_pylist()
    assert rows == [{"prompt": "p0", "id": "zero", "height": 32}, {"prompt": "p1", "id": None, "height": None}]


@pytest.mark.parametrize(
    ("first", "second", "unified"),
    [
        (pa.array([1], pa.int32()), pa.array([2], pa.int64()), pa.int64()),
        (pa.array([None], pa.null()), pa.array([2], pa.int64()), pa.int64()),
        (pa.array([1.5], pa.float32()), pa.array([2.0], pa.float64()), pa.float64()),
        (pa.array([1], pa.int64()), pa.array([None, 2.5], pa.float64()), pa.float64()),  # pandas ints with NaN
        (pa.array(["x"], pa.string()), pa.array(["y"], pa.large_string()), pa.large_string()),
        (pa.array(["x"]).dictionary_encode(), pa.array(["y"], pa.string()), pa.string()),  # pandas categories
    ],
    ids=["int-widths", "all-null", "float-widths", "int-and-float", "string-widths", "dictionary"],
)
def test_types_that_hold_each_others_values_are_unified(tmp_path, first, second, unified):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"] * len(first), "negative_prompt": first}),
                                    "b.parquet": pa.table({"prompt": ["q"] * len(second), "negative_prompt": second})})
    table = inspect(folder)
    assert table.arrow_schema.field("negative_prompt").type == unified
    rows = read_all(table)
    assert rows.column(READ_ERROR).null_count == rows.num_rows
    assert rows.column("negative_prompt").to_pylist() == [*first.cast(unified).to_pylist(),
                                                         *second.cast(unified).to_pylist()]


@pytest.mark.parametrize(
    ("column", "values", "types"),
    [
        ("id", [["one"], [2]], ("string", "int64")),
        ("id", [[1], [2.0]], ("int64", "double")),  # float ids would all be invalid rows
        ("guidance_scale", [[True], [2.0]], ("bool", "double")),
        ("prompt", [["text"], [5]], ("string", "int64")),
    ],
)
def test_a_column_of_different_types_is_refused_naming_files_and_column(tmp_path, column, values, types):
    files = {}
    for name, value in zip(("a.parquet", "b.parquet"), values):
        files[name] = pa.table({"prompt": ["p"], column: value}) if column != "prompt" else pa.table({"prompt": value})
    folder = write(tmp_path / "t", files)
    with pytest.raises(InputError) as raised:
        inspect(folder)
    assert str(raised.value) == (
        f"column {column!r} has different types in the files of the prompt table {str(folder)!r}: "
        f"{types[0]} in {str(folder / 'a.parquet')!r}; {types[1]} in {str(folder / 'b.parquet')!r}. "
        "Give the column one type in every file (text, or numbers) and write those files again"
    )


def test_a_type_conflict_lists_a_few_files_per_type(tmp_path):
    files = {f"{i}.parquet": pa.table({"prompt": ["p"], "seed": [i]}) for i in range(5)}
    files["9.parquet"] = pa.table({"prompt": ["p"], "seed": ["nine"]})
    folder = write(tmp_path / "t", files)
    with pytest.raises(InputError, match=r"int64 in '.*0.parquet', '.*1.parquet', '.*2.parquet' and 2 more "
                                         r"file\(s\); string in '.*9.parquet'"):
        inspect(folder)


def test_unread_columns_may_differ(tmp_path):
    """Only the columns latentmill reads need one type; any other column is not read at all."""
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"], "note": ["x"]}),
                                    "b.parquet": pa.table({"prompt": ["q"], "note": [1]})})
    assert inspect(folder).columns == ("prompt",)


def test_duplicate_column_names_are_refused(tmp_path):
    folder = tmp_path / "t"
    write(folder, {"a.parquet": pa.table({"prompt": ["p"]})})
    pq.write_table(pa.Table.from_arrays([pa.array(["p"]), pa.array([1]), pa.array([2])],
                                        names=["prompt", "seed", "seed"]), folder / "b.parquet")
    with pytest.raises(InputError) as raised:
        inspect(folder)
    assert str(raised.value).startswith(f"{str(folder / 'b.parquet')!r} has 2 columns named 'seed'; every column")


def test_every_file_needs_the_prompt_column(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"]}),
                                    "b.parquet": pa.table({"caption": ["q"]})})
    with pytest.raises(InputError, match=r"b.parquet' has no prompt column 'prompt'; its columns are \['caption'\]"):
        inspect(folder)


def test_the_model_s_extra_parameters_are_read_when_any_file_has_them(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"]}),
                                    "b.parquet": pa.table({"prompt": ["q"], "true_cfg_scale": [4.0]})})
    assert inspect(folder, extra=("true_cfg_scale",)).columns == ("prompt", "true_cfg_scale")
    assert inspect(folder).columns == ("prompt",)


def _corrupt_row_group(path, group: int) -> None:
    offset = pq.ParquetFile(path).metadata.row_group(group).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 10] = b"\xab" * 10
    path.write_bytes(bytes(data))


def test_a_corrupt_row_group_becomes_unreadable_rows_naming_the_file(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": [f"p{i}" for i in range(9)]})}, row_group_size=3)
    _corrupt_row_group(folder / "a.parquet", 1)
    table = inspect(folder)  # the footer is intact
    rows = read_all(table).to_pylist()
    assert len(rows) == 9
    assert [row["prompt"] for row in rows] == ["p0", "p1", "p2", None, None, None, "p6", "p7", "p8"]
    shown = str(folder / "a.parquet")
    assert [row[READ_POSITION] for row in rows[3:6]] == [f"{shown}#3", f"{shown}#4", f"{shown}#5"]
    assert rows[3][READ_ERROR].startswith(f"this row of {shown!r} could not be read: the file's data is corrupt "
                                          "or truncated, or its storage failed (OSError: ")
    assert "\n" not in rows[3][READ_ERROR]
    assert all(row[READ_ERROR] is None and row[READ_POSITION] is None for row in rows[:3] + rows[6:])


def test_a_file_gone_by_the_time_it_is_read(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p", "q"]})})
    table = inspect(folder)
    (folder / "a.parquet").unlink()
    rows = read_all(table).to_pylist()
    assert [row[READ_POSITION] for row in rows] == [f"{folder / 'a.parquet'}#0", f"{folder / 'a.parquet'}#1"]
    assert "(FileNotFoundError: " in rows[0][READ_ERROR]


def test_a_value_that_does_not_fit_the_unified_type_is_an_unreadable_row(tmp_path):
    """Integers and floats read as float64 only where every integer converts exactly."""
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"], "seed": [2**53 + 1]}),
                                    "b.parquet": pa.table({"prompt": ["q"], "seed": [1.0]})})
    rows = read_all(inspect(folder)).to_pylist()
    assert rows[0][READ_ERROR].startswith(f"this row could not be read: column 'seed' of {str(folder / 'a.parquet')!r} "
                                          "cannot be read as double, its type in the table's other files")
    assert rows[1]["seed"] == 1.0 and rows[1][READ_ERROR] is None


def test_unreadable_rows_become_error_rows_in_validation():
    from latentmill.pipelines.validate import validate_batch
    from tests.unit.test_validate import image_family, rules

    block = pa.table({"prompt": ["fine", None], "id": [None, None],
                      READ_ERROR: [None, "this row of 'x.parquet' could not be read: ..."],
                      READ_POSITION: [None, "x.parquet#1"]})
    out = validate_batch(block, rules(image_family()))
    assert out[schema.ERROR_STAGE].tolist() == ["", "validate"]
    assert out[schema.ERROR_TYPE][1] == "UnreadableRow" and out[schema.ID][1] == "x.parquet#1"
    assert out[schema.ERROR_MESSAGE][1] == "this row of 'x.parquet' could not be read: ..."
    assert json.loads(out[schema.INPUT_ROW][1]) == {"unreadable": "x.parquet#1"}
    assert json.loads(out[schema.INPUT_ROW][0]) == {"prompt": "fine", "id": None}  # no read columns


def test_read_tasks_take_the_files_in_order_and_skip_empty_ones(tmp_path):
    folder = write(tmp_path / "t", {f"{i}.parquet": pa.table({"prompt": [f"p{i}"] * i}) for i in range(5)})
    table = inspect(folder)
    tasks = prompt_datasource(table).get_read_tasks(2)
    assert [task.metadata.input_files for task in tasks] == [
        tuple(str(folder / f"{i}.parquet") for i in (1, 2, 3)), (str(folder / "4.parquet"),)]
    assert [task.metadata.num_rows for task in tasks] == [6, 4]
    assert tasks[1].schema == read_schema(table.arrow_schema)
    assert [row["prompt"] for block in tasks[1]() for row in block.to_pylist()] == ["p4"] * 4
    assert len(prompt_datasource(table).get_read_tasks(100)) == 4  # a file's one row group is not split
    with pq.ParquetWriter(tmp_path / "none.parquet", pa.schema([("prompt", pa.string())])):
        pass  # a file without a single row group
    assert inspect(tmp_path / "none.parquet").file_row_groups == ((),)
    assert prompt_datasource(inspect(tmp_path / "none.parquet")).get_read_tasks(3) == []


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 50])
def test_a_large_file_is_split_between_read_tasks_by_row_groups(tmp_path, tasks):
    """Every row once, in order, in at most `tasks` tasks; a corrupt row group still names its rows by
    their row numbers in the file, whichever task reads them."""
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": [f"a{i}" for i in range(20)]}),
                                    "b.parquet": pa.table({"prompt": ["b0", "b1"]})}, row_group_size=3)
    _corrupt_row_group(folder / "a.parquet", 4)  # rows 12-14
    table = inspect(folder)
    assert table.file_row_groups == ((3, 3, 3, 3, 3, 3, 2), (2,))
    read = prompt_datasource(table).get_read_tasks(tasks)
    assert len(read) == min(tasks, 8)  # 8 row groups
    assert sum(task.metadata.num_rows for task in read) == 22
    rows = [row for task in read for block in task() for row in block.to_pylist()]
    shown = str(folder / "a.parquet")
    assert [row["prompt"] or row[READ_POSITION] for row in rows] == [
        *(f"a{i}" for i in range(12)), *(f"{shown}#{i}" for i in (12, 13, 14)), *(f"a{i}" for i in range(15, 20)),
        "b0", "b1"]
    assert sum(row[READ_ERROR] is not None for row in rows) == 3


@pytest.mark.parametrize(("groups", "tasks", "task_rows"), [
    ((4, 4, 2), 2, [4, 6]),  # the first boundary past half (8) would give 8 and 2
    ((1, 1, 1, 1, 6), 2, [4, 6]),
    ((3, 3, 3, 3), 3, [3, 6, 3]),  # shares at 4 and 8: boundaries 3 and 9 are nearest
    ((10,), 4, [10]),
])
def test_read_tasks_cut_at_the_row_group_boundary_nearest_each_share(tmp_path, groups, tasks, task_rows):
    rows = [f"p{i}" for i in range(sum(groups))]
    parts, start = [], 0
    for size in groups:
        parts.append(pa.table({"prompt": rows[start:start + size]}))
        start += size
    folder = tmp_path / "t"
    folder.mkdir()
    with pq.ParquetWriter(folder / "a.parquet", parts[0].schema) as writer:
        for part in parts:
            writer.write_table(part)
    table = inspect(folder)
    assert table.file_row_groups == (groups,)
    read = prompt_datasource(table).get_read_tasks(tasks)
    assert [task.metadata.num_rows for task in read] == task_rows
    assert [row["prompt"] for task in read for block in task() for row in block.to_pylist()] == rows


def test_a_file_gone_before_its_later_row_groups_are_read(tmp_path):
    """A task reading a later part of a vanished file names that part's rows, from the driver's footer."""
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": [f"p{i}" for i in range(6)]})}, row_group_size=2)
    table = inspect(folder)
    (folder / "a.parquet").unlink()
    last = prompt_datasource(table).get_read_tasks(3)[-1]
    assert [row[READ_POSITION] for block in last() for row in block.to_pylist()] == [
        f"{folder / 'a.parquet'}#4", f"{folder / 'a.parquet'}#5"]


def test_row_groups_too_large_to_spread_over_tasks_are_named_with_the_fix(tmp_path):
    folder = write(tmp_path / "t", {"a.parquet": pa.table({"prompt": ["p"] * 6}),
                                    "b.parquet": pa.table({"prompt": ["q"] * 2})})
    table = inspect(folder)
    assert large_row_groups_warning(table, limit=6) is None
    assert large_row_groups_warning(table, limit=5) == (
        f"1 file(s) of the prompt table have row groups of more than 5 rows (for example "
        f"{str(folder / 'a.parquet')!r}: 6); one task reads and validates a whole row group, so such a file "
        "cannot be read in smaller parts. Write such files with smaller row groups, e.g. "
        "pyarrow.parquet.write_table(table, path, row_group_size=10_000)")
