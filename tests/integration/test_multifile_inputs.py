"""Prompt tables of several Parquet files: one schema for all of them, decided before any model runs.

A column any file has is read for every row (null, i.e. the default, where a file lacks it); a column
whose types differ, or a duplicate column name, stops the job before Ray starts; a file whose data pages
are corrupt become error rows that name the file. In local folders and on the S3 test server.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.jobs.cli import EXIT_OK, main
from latentmill.pipelines.job import JobError, prepare
from tests.helpers import generate, read_parquet_folder, write_table
from tests.integration.exactly_once import check_output, check_summary, job_config

pytestmark = pytest.mark.slow

# Four files, four column sets: the first has ids and a height (int32), the second only prompts (its
# rows get derived ids and defaults), the third ids, steps and a seed, which neither of the others has,
# the fourth ids with a slash and "..", and a row without a prompt (an error row).
KEYED_IDS = [f"row/{i} ../x" for i in range(5)]
FILES = {
    "a.parquet": pa.table({"prompt": ["a red fox", "a grey wolf"], "id": ["fox", "wolf"],
                           "height": pa.array([32, None], pa.int32())}),
    "b.parquet": pa.table({"prompt": ["a lighthouse", "a harbour"]}),
    "c.parquet": pa.table({"prompt": ["a kettle"], "id": ["kettle"], "num_inference_steps": [2], "seed": [7]}),
    "d.parquet": pa.table({"prompt": [f"prompt number {i}" for i in range(5)] + [None], "id": KEYED_IDS + ["bad"]}),
}


def _write(files: dict[str, pa.Table], folder, fs=None) -> None:
    for name, table in files.items():
        if fs is None:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / name)
        else:
            with fs.open(f"{folder}/{name}", "wb") as handle:
                pq.write_table(table, handle)


def _s3_settings(s3) -> dict:
    return {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key}


def test_four_files_on_s3_keep_every_id_and_override_and_every_object_matches_manifest(ray_local, s3, tmp_path):
    """Defect 1: the columns of later files (ids, overrides) were dropped; the job exited 0 with derived
    ids and default sizes. Defect 2: a later file without the first file's columns (ids, height) stopped
    after Ray started with 'ArrowInvalid: To change retry attempts...', naming neither the file nor the
    field. On S3 (a local folder of files: the corrupt-pages test below): prompts read from s3://, media,
    manifest and error rows written there, each object as the manifest describes it, and the secret key
    nowhere in summary.json."""
    fs, _ = storage.resolve("s3://latentmill/", s3.storage_options())
    prefix = f"latentmill/multifile-{tmp_path.name}"
    _write(FILES, f"{prefix}/table", fs)
    table_uri, out_uri, storage_section, options = (f"s3://{prefix}/table", f"s3://{prefix}/out", _s3_settings(s3),
                                                    s3.storage_options())
    summary, _ = generate(table_uri, out_uri, storage=storage_section)
    check_summary(summary, rows=11, outputs=10, failed=1)

    output = check_output(out_uri, {"fox", "wolf", "kettle", *_derived_ids(2), *KEYED_IDS}, {"bad"},
                          storage_options=options)
    fox, wolf, kettle = (output.manifest[key] for key in ("fox", "wolf", "kettle"))
    assert (fox[schema.HEIGHT], fox[schema.WIDTH]) == (32, 64)  # a's override
    assert wolf[schema.HEIGHT] == 64  # a null override: the model's default
    assert (kettle[schema.STEPS], kettle[schema.SEED], kettle[schema.HEIGHT]) == (2, 7, 64)
    derived = [row for key, row in output.manifest.items() if key.startswith("p")]
    assert sorted(row[schema.PROMPT] for row in derived) == ["a harbour", "a lighthouse"]

    for row in output.manifest.values():
        assert row[schema.OUTPUT_URI].startswith(f"{out_uri}/media/")
        data = fs.cat_file(row[schema.OUTPUT_URI])
        assert hashlib.sha256(data).hexdigest() == row[schema.SHA256] and len(data) == row[schema.BYTES]
    media_keys = fs.ls(f"{prefix}/out/media")
    assert len(media_keys) == 10 and all("/media/" in key for key in media_keys)
    errors = read_parquet_folder(fs, f"{prefix}/out/errors").to_pylist()
    assert [(e[schema.ID], e[schema.ERROR_STAGE]) for e in errors] == [("bad", "validate")]
    summary_json = fs.cat_file(f"{prefix}/out/summary.json").decode()
    assert s3.secret_key not in summary_json and '"outputs_written": 10' in summary_json


def _derived_ids(count: int) -> set[str]:
    from latentmill.pipelines.validate import derived_id

    return {derived_id(prompt, {}) for prompt in ["a lighthouse", "a harbour"][:count]}


@pytest.mark.parametrize("place", ["local", "s3"])
def test_a_column_of_different_types_stops_before_ray_naming_files_and_column(model_cache, tmp_path, place,
                                                                              request):
    """Text ids in one file and integer ids in another: refused up front, naming both files and the column
    (before, Ray Data failed on it after the models had started)."""
    files = {"a.parquet": pa.table({"prompt": ["p"], "id": ["one"]}),
             "b.parquet": pa.table({"prompt": ["p"]}),
             "c.parquet": pa.table({"prompt": ["q"], "id": [2]})}
    if place == "local":
        _write(files, tmp_path / "table")
        table_uri, out_uri, storage_section = str(tmp_path / "table"), str(tmp_path / "out"), {}
        shown = (str(tmp_path / "table" / "a.parquet"), str(tmp_path / "table" / "c.parquet"))
    else:
        s3 = request.getfixturevalue("s3")
        fs, _ = storage.resolve("s3://latentmill/", s3.storage_options())
        prefix = f"latentmill/conflict-{tmp_path.name}"
        _write(files, f"{prefix}/table", fs)
        table_uri, out_uri, storage_section = f"s3://{prefix}/table", f"s3://{prefix}/out", _s3_settings(s3)
        shown = (f"s3://{prefix}/table/a.parquet", f"s3://{prefix}/table/c.parquet")
    config = job_config(table_uri, out_uri, storage=storage_section)
    with pytest.raises(JobError) as raised:
        prepare(config)
    message = str(raised.value)
    assert "column 'id' has different types in the files of the prompt table" in message
    assert f"string in {shown[0]!r}; int64 in {shown[1]!r}" in message
    assert "Give the column one type in every file" in message


def _corrupt_row_group(path, group: int) -> None:
    """Overwrite the start of one row group's data pages: the footer (schema, row counts) stays intact."""
    offset = pq.ParquetFile(path).metadata.row_group(group).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 10] = b"\xab" * 10
    path.write_bytes(bytes(data))


def test_a_file_with_corrupt_data_pages_becomes_error_rows_naming_it(ray_local, tmp_path, capsys):
    """Defect 3: an intact footer over corrupt data pages: an uncaught RayTaskError(OSError) traceback
    from building the dataset, the file not named. Now the rows of the damaged row group are error rows
    that name the file and their row; every other row, of this file and the others, is generated."""
    folder = tmp_path / "table"
    folder.mkdir()
    write_table(folder / "a.parquet", [{"prompt": "a fine row", "id": "fine"}])
    bad = folder / "b.parquet"
    pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(6)], "id": [f"b{i}" for i in range(6)]}), bad,
                   row_group_size=3)
    _corrupt_row_group(bad, 0)
    assert pq.ParquetFile(bad).metadata.num_rows == 6  # the footer still reads

    code = main(["run", "--no-progress", "--input", str(folder), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err[-2000:]
    assert "Traceback" not in err
    unreadable = {f"{bad}#{row}" for row in range(3)}
    output = check_output(str(tmp_path / "out"), {"fine", "b3", "b4", "b5"}, unreadable)
    check_summary(output.summary, rows=7, outputs=4, failed=3)
    row = output.errors[f"{bad}#1"]
    assert (row[schema.ERROR_STAGE], row[schema.ERROR_TYPE]) == ("validate", "UnreadableRow")
    assert row[schema.ERROR_MESSAGE].startswith(f"this row of {str(bad)!r} could not be read: the file's data is "
                                                "corrupt or truncated")
    assert "Replace the file (or move it out of the table) and re-run the same command" in row[schema.ERROR_MESSAGE]
