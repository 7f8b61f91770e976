"""cache.embeddings: a second run of the same prompts skips the text encoder and makes the same outputs (a
corrupt or foreign entry is ignored and encoded again: tests/models/test_encode_worker_cache.py)."""

from __future__ import annotations

import pytest

from latentmill import schema
from latentmill.io import storage

from tests.helpers import generate, read_parquet_folder, write_table

pytestmark = pytest.mark.slow

ROWS = [{"id": "a", "prompt": "a lighthouse at dusk", "negative_prompt": "blurry"},
        {"id": "b", "prompt": "a red fox in the snow"},
        {"id": "c", "prompt": "a red fox in the snow", "guidance_scale": 1.0},  # no negative: its own entry
        {"id": "d", "prompt": "a bowl of fruit", "seed": 5},
        {"id": "e", "prompt": "a bowl of fruit", "seed": 6}]  # same encoding as d: one entry for both


def manifest(uri: str, options: dict) -> dict[str, dict]:
    fs, root = storage.resolve(uri, options)
    return {row[schema.ID]: row for row in read_parquet_folder(fs, storage.join(root, "manifest")).to_pylist()}


def test_cached_embeddings_make_the_same_outputs_without_encoding(ray_local, s3, tmp_path):
    """On S3. A cache in a local folder is written and read through the same fsspec calls; the quality
    gate's test in test_synthesis.py runs one (its new attempts take their embeddings from it)."""
    options = s3.storage_options()
    base = f"s3://latentmill/{tmp_path.name}"
    sections = {"storage": {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key}}
    table = write_table(tmp_path / "prompts.parquet", ROWS)
    cache = {"embeddings": f"{base}/embedding-cache"}

    encoded = {}

    def run(name: str) -> dict[str, dict]:
        summary, _ = generate(str(table), f"{base}/{name}", model="builtin:tiny-sdxl", batch_size=1,  # equal batches in every run: equal bits
                              cache=cache, **sections)
        assert (summary.outputs_written, summary.rows_failed) == (5, 0)
        encoded[name] = summary.prompts_encoded
        return manifest(f"{base}/{name}", options)

    first = run("first")
    # d and e share an encoding: whichever comes second may already find the other's entry
    assert not any(row[schema.EMBEDDINGS_CACHED] for i, row in first.items() if i in "abc")
    fs, root = storage.resolve(cache["embeddings"], options)
    entries = sorted(fs.glob(storage.join(root, "*", "*.emb")))
    assert len(entries) == 4  # d and e share one

    second = run("second")
    assert all(row[schema.EMBEDDINGS_CACHED] for row in second.values())
    assert encoded["first"] >= 4 and encoded["second"] == 0  # the text encoder never ran
    assert {i: r[schema.SHA256] for i, r in second.items()} == {i: r[schema.SHA256] for i, r in first.items()}
