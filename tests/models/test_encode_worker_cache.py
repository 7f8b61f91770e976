"""The encode worker with cache.embeddings, without Ray: a corrupt or foreign entry is ignored (a warning),
its row encoded again and the entry written again; a batch the cache holds whole never
loads the text encoder. (Two runs on S3 through Ray, the second encoding nothing and making the same
outputs: tests/integration/test_embedding_cache.py.)"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from latentmill import schema
from latentmill.actors.stages import EmbeddingCacheSettings, TextEncodeWorker
from latentmill.io.hidden import HiddenOptions
from latentmill.models import encoder_content_hash, resolve_model, tensors

from tests.helpers import validated_rows

pytestmark = pytest.mark.slow

ROWS = [{"prompt": "a lighthouse at dusk", "negative_prompt": "blurry"},
        {"prompt": "a red fox in the snow"},
        {"prompt": "a red fox in the snow", "guidance_scale": 1.0},  # no negative: its own entry
        {"prompt": "a bowl of fruit", "seed": 5}]


@pytest.fixture(autouse=True)
def _one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path / "models"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_corrupt_or_foreign_entry_is_encoded_again_and_a_cached_batch_loads_no_encoder(tmp_path, caplog):
    model = resolve_model("builtin:tiny-sdxl")
    settings = EmbeddingCacheSettings(str(tmp_path / "cache"), HiddenOptions({}), encoder_content_hash(model.path))
    batch = validated_rows(model.family(), ROWS)

    def encode() -> tuple[TextEncodeWorker, dict]:
        worker = TextEncodeWorker(model, 0, "float32", 1, embedding_cache=settings)
        return worker, worker(batch)

    _, first = encode()
    columns = model.family().conditioning_columns()
    assert not any(first[schema.EMBEDDINGS_CACHED])
    entries = sorted((tmp_path / "cache").rglob("*.emb"))
    assert len(entries) == 4
    entries[0].write_bytes(b"not an entry")  # corrupt
    entries[1].write_bytes(entries[2].read_bytes())  # another key's entry

    with caplog.at_level(logging.WARNING):
        _, second = encode()
    assert caplog.text.count("ignoring entry") == 2
    assert sorted(second[schema.EMBEDDINGS_CACHED]) == [False, False, True, True]
    for name in columns:  # cached rows: the same bits; encoded again (in a smaller batch): the same values
        for row, cached in enumerate(second[schema.EMBEDDINGS_CACHED]):
            if cached:
                assert second[name][row] == first[name][row], (name, row)
            else:
                again, before = tensors.unpack(second[name][row]), tensors.unpack(first[name][row])
                assert (again is None) == (before is None) and (again is None or np.allclose(again, before, atol=1e-5))
    assert list(second[schema.PROMPT_TRUNCATED]) == list(first[schema.PROMPT_TRUNCATED])

    worker, third = encode()  # both entries were written again
    assert all(third[schema.EMBEDDINGS_CACHED]) and not any(third[schema.ENCODED])
    assert not worker.encoder_loaded and not worker.family.loaded_modules()
    for name in columns:
        assert list(third[name]) == list(second[name]), name
