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


def diffusers_layout_of(clip_folder, folder, image_folder: str = "feature_extractor"):
    """The CLIPModel in `clip_folder` re-saved as a diffusers pipeline keeps its CLIP: text_encoder/
    (CLIPTextModelWithProjection), image_encoder/ (CLIPVisionModelWithProjection), tokenizer/ and
    `image_folder`/, with the same weights."""
    from transformers import (CLIPModel, CLIPProcessor, CLIPTextModelWithProjection,
                              CLIPVisionModelWithProjection)

    model = CLIPModel.from_pretrained(clip_folder)
    weights = model.state_dict()
    text = CLIPTextModelWithProjection(model.config.text_config)
    text.load_state_dict({k: v for k, v in weights.items() if k.startswith(("text_model.", "text_projection."))})
    vision = CLIPVisionModelWithProjection(model.config.vision_config)
    vision.load_state_dict({k: v for k, v in weights.items() if k.startswith(("vision_model.", "visual_projection."))})
    text.save_pretrained(folder / "text_encoder")
    vision.save_pretrained(folder / "image_encoder")
    processor = CLIPProcessor.from_pretrained(clip_folder)
    processor.tokenizer.save_pretrained(folder / "tokenizer")
    processor.image_processor.save_pretrained(folder / image_folder)
    return folder


@pytest.mark.parametrize("image_folder", ["feature_extractor", "image_processor"])
def test_a_diffusers_style_clip_folder_scores_as_the_clip_model_with_the_same_weights(tmp_path, scorer, image_folder):
    import torch

    clip = tiny_clip(tmp_path / "clip")
    folder = diffusers_layout_of(clip, tmp_path / "pipeline", image_folder)
    assert not (folder / "config.json").exists()
    diffusers_scorer = ClipScorer(resolve_clip(str(folder)), torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(1)
    samples = [rng.integers(0, 256, (1, 40, 48, 3), dtype=np.uint8), rng.integers(0, 256, (9, 40, 48, 3), np.uint8)]
    prompts = ["a cat", "a photo of a cat sitting on a red sofa " * 30]
    got = diffusers_scorer.scores(samples, prompts)
    assert all(np.isfinite(got))
    assert got == pytest.approx(scorer.scores(samples, prompts), abs=1e-4)


def test_a_diffusers_style_folder_that_is_incomplete_is_refused_naming_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"is neither CLIP layout: folder .*empty has no config.json .* "
                                         r"text_encoder/ \(CLIPTextModelWithProjection\)"):
        resolve_clip(str(empty))
    folder = diffusers_layout_of(tiny_clip(tmp_path / "clip"), tmp_path / "pipeline")
    (folder / "feature_extractor" / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="diffusers layout.*no feature_extractor/preprocessor_config.json or "
                                         "image_processor/preprocessor_config.json"):
        resolve_clip(str(folder))
    (folder / "image_encoder" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="image_encoder is a 'bert' model, not CLIP"):
        resolve_clip(str(folder))
