"""Shard stores commit a shard with its sidecar last and clean up after a crash; a prompt row folds N
samples and unfolds them with their own ids, seeds and states."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.io.outputs import ShardStore, shard_key
from latentmill.rows import empty_request_columns, fold_samples, unfold_samples

COLUMNS = (schema.ID, schema.PROMPT, schema.OUTPUT_URI, schema.BYTES, schema.SHA256, schema.MIME_TYPE)


def staged_rows(root, ids: list[str]) -> list[dict]:
    """Manifest rows of samples whose media a decode actor staged."""
    rows = []
    for row_id in ids:
        data = f"png of {row_id}".encode()
        storage.put_bytes(*storage.resolve(str(root / "staging" / f"{row_id}.png")), data)
        rows.append({schema.ID: row_id, schema.PROMPT: f"prompt of {row_id}", schema.BYTES: len(data),
                     schema.OUTPUT_URI: str(root / "staging" / f"{row_id}.png"), schema.SHA256: "x",
                     schema.MIME_TYPE: "image/png"})
    return rows


def store(root, layout: str = "webdataset") -> ShardStore:
    fs, path = storage.resolve(str(root))
    return ShardStore(fs, path, str(root), "run", COLUMNS, layout, shard_size=3)


def test_full_shards_are_written_as_they_fill_and_the_rest_on_commit(tmp_path):
    shards = store(tmp_path)
    shards.resume("sha256")
    shards.add(staged_rows(tmp_path, ["a", "b", "c", "d"]))
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.parquet", "00000.tar",
                                                                      "00000_stats.json"]
    shards.commit()
    with tarfile.open(tmp_path / "shards" / "00001.tar") as tar:
        assert tar.getnames() == ["d.png", "d.json", "d.txt"]
        assert json.loads(tar.extractfile("d.json").read())[schema.OUTPUT_URI] == str(tmp_path / "shards" / "00001.tar")
    assert pq.read_table(tmp_path / "shards" / "00000.parquet")[schema.ID].to_pylist() == ["a", "b", "c"]
    assert json.loads((tmp_path / "shards" / "00001_stats.json").read_text())["samples"] == 1
    assert not list((tmp_path / "staging").iterdir())  # staged media go once their shard is committed


@pytest.mark.parametrize("layout", ["webdataset", "parquet"])
def test_resume_keeps_committed_shards_and_removes_what_a_crash_left(tmp_path, layout):
    first = store(tmp_path, layout)
    first.resume("sha256")
    first.add(staged_rows(tmp_path, ["a", "b", "c"]))
    # A crash while writing the next shard: its data file (and a temporary file) but no commit marker.
    (tmp_path / "shards" / "00001.tar").write_bytes(b"half a tar")
    (tmp_path / "shards" / "00001_stats.json").write_text("{}")
    (tmp_path / "shards" / ".00001.parquet.x1y2.tmp").write_bytes(b"half a parquet")
    staged_rows(tmp_path, ["d"])

    again = store(tmp_path, layout)
    assert set(again.resume("sha256").done) == {"a", "b", "c"}
    data = "00000.tar" if layout == "webdataset" else "00000.parquet"
    assert {p.name for p in (tmp_path / "shards").iterdir()} == {data, "00000.parquet", "00000_stats.json"}
    assert not list((tmp_path / "staging").iterdir())
    assert again.next_shard == 1


def test_a_parquet_shard_holds_the_media_in_an_image_struct(tmp_path):
    shards = store(tmp_path, "parquet")
    shards.resume("sha256")
    shards.add(staged_rows(tmp_path, ["a", "b", "c"]))
    table = pq.read_table(tmp_path / "shards" / "00000.parquet")
    assert table["image"].to_pylist()[0] == {"bytes": b"png of a", "path": "a.png"}
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}


def test_a_parquet_shard_is_streamed_in_row_groups_and_reads_back_whole(tmp_path, monkeypatch):
    """A shard of 7 samples written 3 at a time: three row groups, uploaded from a local file with
    put_file (as a tar is), that pyarrow and Hugging Face `datasets` read back whole and in order."""
    import datasets

    from latentmill.io import outputs

    monkeypatch.setattr(outputs, "READ_AHEAD", 3)
    uploaded = []
    put_file = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda fs, local, path, **kw: (uploaded.append(path),
                                                                            put_file(fs, local, path, **kw)))
    fs, path = storage.resolve(str(tmp_path))
    shards = ShardStore(fs, path, str(tmp_path), "run", COLUMNS, "parquet", shard_size=7)
    shards.resume("sha256")
    ids = [f"s{i}" for i in range(7)]
    shards.add(staged_rows(tmp_path, ids))
    shard = tmp_path / "shards" / "00000.parquet"
    assert uploaded == [str(shard)]
    assert pq.ParquetFile(shard).metadata.num_row_groups == 3
    table = pq.read_table(shard)
    assert table[schema.ID].to_pylist() == ids
    assert [value["bytes"] for value in table["image"].to_pylist()] == [f"png of {i}".encode() for i in ids]
    assert json.loads((tmp_path / "shards" / "00000_stats.json").read_text())["media_bytes"] == sum(
        len(f"png of {i}") for i in ids)
    dataset = datasets.load_dataset("parquet", data_files=[str(shard)], split="train",
                                    cache_dir=str(tmp_path / "hf"))
    assert isinstance(dataset.features["image"], datasets.Image) and dataset["id"] == ids
    assert dataset.cast_column("image", datasets.Image(decode=False))[6]["image"]["bytes"] == b"png of s6"
    assert not list((tmp_path / "staging").iterdir()) and not list(tmp_path.glob("shards/*.tmp"))


def test_a_shard_key_has_no_dot_and_stays_distinct():
    assert shard_key("r-01-s3") == "r-01-s3"
    assert "." not in shard_key("v1.2") and shard_key("v1.2") != shard_key("v1_2")


def test_samples_fold_into_one_prompt_row_and_unfold_with_their_own_state():
    columns = empty_request_columns(4)
    columns[schema.ID][:] = ["a-s0", "a-s1", "a-s2", "b"]
    columns[schema.SEED][:] = [10, 11, 12, 20]
    columns[schema.SAMPLE_INDEX][:] = [0, 1, 2, 0]
    columns[schema.ERROR_STAGE][0] = schema.ALREADY_DONE
    folded = fold_samples(columns, [[0, 1, 2], [3]])
    assert list(folded[schema.ID]) == ["a-s1", "b"]  # the first sample that still needs work
    folded[schema.ENCODED] = np.array([True, True])
    folded["conditioning"] = np.array([b"A", b"B"], dtype=object)
    folded["encode_seconds"] = np.array([0.3, 0.5])
    out = unfold_samples(folded)
    assert list(out[schema.ID]) == ["a-s0", "a-s1", "a-s2", "b"]
    assert list(out[schema.SEED]) == [10, 11, 12, 20] and list(out[schema.SAMPLE_INDEX]) == [0, 1, 2, 0]
    assert list(out[schema.ERROR_STAGE]) == [schema.ALREADY_DONE, "", "", ""]
    assert list(out["conditioning"]) == [b"A", b"A", b"A", b"B"]
    assert list(out[schema.ENCODED]) == [False, True, False, True]  # one encoding per prompt
    assert out["encode_seconds"].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.5])
