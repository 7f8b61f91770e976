"""The CLIP-score gate with a tiny random CLIP model, and the near-duplicate counts of stats.json, on local
Ray: scores are recorded, a threshold every sample fails ends in error rows after max_attempts, and the
near-duplicate pairs (identical rows made on purpose) add up on the driver, per shard and on Ray Data; a
CLIP model on the S3 test server is copied once and loads.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.io.perceptual import hamming_distance, parse_hashes
from latentmill.models import ModelError
from tests.helpers import check_against_reference, tiny_clip, write_table
from tests.integration.exactly_once import faults, run, stage_actors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    return str(tiny_clip(tmp_path_factory.mktemp("clip")))


def near_duplicates(hashes: list[str], distance: int) -> int:
    return sum(all(hamming_distance(a, b) <= distance for a, b in zip(parse_hashes(x), parse_hashes(y)))
               for x, y in itertools.combinations(hashes, 2))


def test_clip_scores_are_recorded_and_near_duplicates_counted(ray_local, tmp_path, clip_model, monkeypatch):
    """Eight rows, two pairs of them with the same prompt and seed (identical images), in shards of four,
    with a CLIP threshold every sample passes."""
    from latentmill.pipelines import duplicates

    rows = [{"id": f"c{i}", "prompt": f"a photo of a cat {i}", "seed": 100 + i} for i in range(8)]
    rows[1].update(prompt=rows[0]["prompt"], seed=rows[0]["seed"])
    rows[7].update(prompt=rows[6]["prompt"], seed=rows[6]["seed"])
    table = write_table(tmp_path / "prompts.parquet", rows)
    out = tmp_path / "out"
    summary = run(str(table), str(out), output={"layout": "webdataset", "shard_size": 4},
                  quality={"clip_score": {"model": clip_model, "min": -1000}})
    assert (summary.outputs_written, summary.rows_failed) == (8, 0)
    shards = sorted((out / "shards").glob("*.parquet"))
    manifest = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    assert all(math.isfinite(row[schema.CLIP_SCORE]) and row[schema.ATTEMPT] == 0 for row in manifest)
    hashes = {row[schema.ID]: row[schema.PHASH] for row in manifest}
    assert all(len(value) == 16 and int(value, 16) >= 0 for value in hashes.values())
    assert hashes["c0"] == hashes["c1"] and hashes["c6"] == hashes["c7"]

    stats = json.loads((out / "stats.json").read_text())
    expected = near_duplicates(list(hashes.values()), 4)
    assert stats["near_duplicate_distance"] == 4 and stats["near_duplicate_pairs"] == expected >= 2
    assert stats["attempts"] == {"0": 8} and stats["failed_by_gate"] == {}
    for shard in shards:  # each shard counts the pairs among its own samples
        shard_stats = json.loads(shard.with_name(shard.stem + "_stats.json").read_text())
        assert shard_stats["near_duplicate_pairs"] == near_duplicates(pq.read_table(shard)[schema.PHASH].to_pylist(), 4)
    # The Ray Data path (large outputs) counts the same pairs.
    monkeypatch.setattr(duplicates, "DRIVER_HASHES", 0)
    files = [storage.join(str(out), "shards", shard.name) for shard in shards]
    assert duplicates.count_dataset_pairs(str(out), {}, files, 8, 4) == expected


def test_a_clip_threshold_no_sample_reaches_ends_in_error_rows_naming_the_gate(ray_local, tmp_path, clip_model):
    table = write_table(tmp_path / "prompts.parquet", [{"id": f"x{i}", "prompt": f"a dog {i}"} for i in range(3)])
    out = tmp_path / "out"
    summary = run(str(table), str(out), quality={"clip_score": {"model": clip_model, "min": 1000}, "max_attempts": 2})
    assert (summary.rows_read, summary.outputs_written, summary.rows_failed) == (3, 0, 3)
    errors = pq.read_table(out / "errors").to_pylist()
    assert {row[schema.ID] for row in errors} == {"x0", "x1", "x2"}
    for row in errors:
        assert (row[schema.ERROR_STAGE], row[schema.ERROR_TYPE]) == ("decode", "LowClipScore")
        assert "quality gate clip_score on attempt 2" in row[schema.ERROR_MESSAGE]
        assert "below quality.clip_score.min 1000" in row[schema.ERROR_MESSAGE]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["failed_by_gate"] == {"clip_score": 3} and stats["failed_by_stage"] == {"decode": 3}


def test_a_clip_model_on_s3_is_copied_once_and_loads(s3, clip_model, tmp_path, monkeypatch):
    import torch

    from latentmill.models.clip_score import ClipScorer, resolve_clip

    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path / "cache"))
    uri = "s3://latentmill/models/tiny-clip"
    fs, path = storage.resolve(uri, s3.storage_options())
    fs.put(clip_model + "/", path, recursive=True)
    local = resolve_clip(uri, s3.storage_options())
    assert local.is_relative_to(tmp_path / "cache") and (local / "model.safetensors").is_file()
    assert resolve_clip(uri, s3.storage_options()) == local  # the copy is reused
    scores = ClipScorer(local, torch.device("cpu"), torch.float32).scores([np.zeros((1, 32, 32, 3), np.uint8)], ["a"])
    assert math.isfinite(scores[0])
    with pytest.raises(ModelError, match="cannot download the model 's3://latentmill/models/missing'"):
        resolve_clip("s3://latentmill/models/missing", s3.storage_options())


def test_a_rejected_sample_is_generated_again_without_encoding_its_prompt_again(ray_local, tmp_path):
    """No embedding cache: NaN latents for one row and a blank image for another on their first attempt. Each
    is generated again (`attempt` 1) through the denoise and decode pools only: the run encodes each of its
    four prompts once (`prompts_encoded`, which counts rejected attempts' encodings too, is 4, not 6), the
    new attempts' manifest rows show no encode time, and every image, new attempts' included, is what plain
    diffusers makes for its row's seed. (With reject_nonfinite alone, only rejected rows carry their
    conditioning on: tests/unit/test_faults.py. New attempts whose embeddings come from a cache:
    tests/integration/test_synthesis.py.)"""
    ids = [f"q-{i:02d}" for i in range(4)]
    table = str(write_table(tmp_path / "prompts.parquet", [{"id": i, "prompt": f"prompt {i}"} for i in ids]))
    gates = {"reject_nonfinite": True, "reject_blank": True}
    denoisers_before = {actor["ActorID"] for actor in stage_actors("DenoiseWorker")}
    with faults("denoise:nan:q-01;decode:blank:q-02"):
        forwarded = run(table, str(tmp_path / "forwarded"), quality=gates, stages={"denoise": {"size": 2}})
    # the first pass starts the pool's two denoise actors; the retry pass one, for its one batch of two rows
    assert len({actor["ActorID"] for actor in stage_actors("DenoiseWorker")} - denoisers_before) == 3

    regenerated = {"q-01", "q-02"}
    assert (forwarded.rows_read, forwarded.outputs_written, forwarded.rows_failed) == (4, 4, 0)
    assert forwarded.prompts_encoded == 4  # one encoding per prompt: none for the new attempts
    rows = {row[schema.ID]: row for row in check_against_reference(str(tmp_path / "forwarded"), "builtin:tiny-image", 4)}
    assert set(rows) == set(ids)
    for row_id, row in rows.items():
        assert row[schema.ATTEMPT] == (1 if row_id in regenerated else 0), row_id
        if row_id in regenerated:
            assert row[schema.EMBEDDINGS_CACHED] is False, row_id
            assert row[schema.seconds_column("encode")] == 0.0, row_id
    stats = json.loads((tmp_path / "forwarded" / "stats.json").read_text())
    assert stats["attempts"] == {"0": 2, "1": 2} and stats["prompts_encoded"] == 4
