"""The CLIP scorer of the quality gate's clip_score, on a tiny random CLIP model built here, and the checks
that refuse a folder that is not a CLIP model before anything starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentmill.models import ModelError
from latentmill.models.clip_score import ClipScorer, resolve_clip
from tests.helpers import tiny_clip


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    import torch

    return ClipScorer(resolve_clip(str(tiny_clip(tmp_path_factory.mktemp("clip")))), torch.device("cpu"),
                      torch.float32)


def test_scores_are_per_sample_and_a_video_scores_the_mean_of_its_keyframes(scorer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 40, 48, 3), dtype=np.uint8)
    video = rng.integers(0, 256, (9, 40, 48, 3), dtype=np.uint8)
    long_prompt = "a photo of a cat sitting on a red sofa " * 30  # past CLIP's 77 tokens: cut for scoring
    scores = scorer.scores([image, video, image], ["a cat", long_prompt, "a dog in the snow"])
    assert len(scores) == 3 and all(np.isfinite(scores)) and all(-100 <= s <= 100 for s in scores)
    assert scorer.scores([image], ["a cat"]) == pytest.approx([scores[0]], abs=1e-4)  # batch mates do not matter
    keyframes = scorer.scores([video[i:i + 1] for i in (0, 3, 5, 8)], [long_prompt] * 4)
    assert scores[1] == pytest.approx(np.mean(keyframes), abs=1e-4)


def test_a_folder_that_is_not_a_saved_clip_model_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="does not exist .*CLIPModel.save_pretrained"):
        resolve_clip(str(tmp_path / "missing"))
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="tokenizer_config.json is missing"):
        resolve_clip(str(folder))
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelError, match="no preprocessor_config.json or processor_config.json"):
        resolve_clip(str(folder))
    (folder / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelError, match="is a 'bert' model, not CLIP"):
        resolve_clip(str(folder))
