"""CLIP score of decoded frames against their prompt, for the quality gate's `clip_score`.

The score is 100 x the cosine similarity of CLIP's image and text embeddings (the usual CLIP score, as
torchmetrics computes it, without its clamp at 0). A video scores the mean over a few evenly spaced
keyframes. The model is a folder (locally or under an s3:// URI, copied once per node like a checkpoint)
in one of two layouts:

- transformers: a `CLIPModel` and its `CLIPProcessor`, both saved with `save_pretrained` into the folder;
- diffusers: the subfolders a diffusers pipeline uses for CLIP, `text_encoder` (a
  `CLIPTextModelWithProjection`), `image_encoder` (a `CLIPVisionModelWithProjection`), `tokenizer`, and
  `feature_extractor` or `image_processor` (a `CLIPImageProcessor`).

Both give the same projected embeddings for the same weights (CLIPModel.get_text_features is the text
model's pooled output through its text projection, which is what CLIPTextModelWithProjection returns as
`text_embeds`; the same for images), hence the same score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from latentmill.io.media import keyframe_indices
from latentmill.models import ModelError, _json_problem, materialize

CLIP_FILES = ("config.json", "tokenizer_config.json")
# Where a saved CLIPProcessor keeps its image settings (transformers 5 writes processor_config.json).
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# The diffusers layout's subfolders.
DIFFUSERS_TEXT, DIFFUSERS_IMAGE, DIFFUSERS_TOKENIZER = "text_encoder", "image_encoder", "tokenizer"
DIFFUSERS_IMAGE_PROCESSORS = ("feature_extractor", "image_processor")
TRANSFORMERS, DIFFUSERS = "transformers", "diffusers"
SAVE_HINT = ("save the model with CLIPModel.save_pretrained(DIR) and its processor with "
             "CLIPProcessor.save_pretrained(DIR), or give the folder of a diffusers pipeline's CLIP: "
             "text_encoder/ (CLIPTextModelWithProjection), image_encoder/ (CLIPVisionModelWithProjection), "
             "tokenizer/ and feature_extractor/ or image_processor/")
# A copy of a URI is complete when it has one of these (the copy is renamed into place when whole).
MARKERS = ("config.json", f"{DIFFUSERS_TEXT}/config.json")


def clip_layout(folder: Path) -> str | None:
    """TRANSFORMERS (a config.json at the top), DIFFUSERS (text_encoder/ or image_encoder/), or None."""
    if (folder / "config.json").exists():
        return TRANSFORMERS
    if (folder / DIFFUSERS_TEXT).is_dir() or (folder / DIFFUSERS_IMAGE).is_dir():
        return DIFFUSERS
    return None


def resolve_clip(path: str, storage_options: dict[str, Any] | None = None) -> Path:
    """The local folder of the CLIP model `path` (a folder or URI); ModelError saying what is wrong."""
    what = f"the CLIP model {path!r} (quality.clip_score.model)"
    local = materialize(path, storage_options, marker=MARKERS)
    if not local.is_dir():
        raise ModelError(f"{what} does not exist (looked for folder {local}); {SAVE_HINT}")
    layout = clip_layout(local)
    if layout is None:
        raise ModelError(f"{what} is neither CLIP layout: folder {local} has no config.json (a transformers "
                         f"CLIPModel folder) and no {DIFFUSERS_TEXT}/ or {DIFFUSERS_IMAGE}/ subfolder (a diffusers "
                         f"pipeline's CLIP); {SAVE_HINT}")
    if layout == DIFFUSERS:
        _check_diffusers_layout(local, what)
        return local
    for name in CLIP_FILES:
        problem = _json_problem(local / name)
        if problem:
            raise ModelError(f"{what} is incomplete: {problem}; {SAVE_HINT}")
    if not any((local / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        raise ModelError(f"{what} is incomplete: it has no {' or '.join(IMAGE_PROCESSOR_FILES)}; {SAVE_HINT}")
    model_type = json.loads((local / "config.json").read_text()).get("model_type")
    if model_type != "clip":
        raise ModelError(f"{what} is a {model_type!r} model, not CLIP (its config.json needs model_type 'clip'); "
                         f"{SAVE_HINT}")
    return local


def _check_diffusers_layout(local: Path, what: str) -> None:
    for name, model_type in ((DIFFUSERS_TEXT, "clip_text_model"), (DIFFUSERS_IMAGE, "clip_vision_model")):
        problem = _json_problem(local / name / "config.json")
        if problem:
            raise ModelError(f"{what} (diffusers layout) is incomplete: {problem}; {SAVE_HINT}")
        found = json.loads((local / name / "config.json").read_text()).get("model_type")
        if found != model_type:
            raise ModelError(f"{what} (diffusers layout): {local / name} is a {found!r} model, not CLIP (its "
                             f"config.json needs model_type {model_type!r}); {SAVE_HINT}")
    problem = _json_problem(local / DIFFUSERS_TOKENIZER / "tokenizer_config.json")
    if problem:
        raise ModelError(f"{what} (diffusers layout) is incomplete: {problem}; {SAVE_HINT}")
    if _diffusers_image_processor(local) is None:
        raise ModelError(f"{what} (diffusers layout) is incomplete: it has no "
                         f"{' or '.join(f'{name}/preprocessor_config.json' for name in DIFFUSERS_IMAGE_PROCESSORS)}; "
                         f"{SAVE_HINT}")


def _diffusers_image_processor(local: Path) -> Path | None:
    for name in DIFFUSERS_IMAGE_PROCESSORS:
        if any((local / name / file).is_file() for file in IMAGE_PROCESSOR_FILES):
            return local / name
    return None


class ClipScorer:
    """A CLIP model loaded once (in a decode actor), scoring batches of decoded samples; either layout."""

    def __init__(self, folder: Path, device, dtype, keyframes: int = 4) -> None:
        self.device, self.dtype, self.keyframes = device, dtype, keyframes
        if clip_layout(folder) == DIFFUSERS:
            from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPTextModelWithProjection,
                                      CLIPVisionModelWithProjection)

            text = CLIPTextModelWithProjection.from_pretrained(folder / DIFFUSERS_TEXT)
            vision = CLIPVisionModelWithProjection.from_pretrained(folder / DIFFUSERS_IMAGE)
            self.text_model = text.to(device=device, dtype=dtype).eval()
            self.vision_model = vision.to(device=device, dtype=dtype).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder / DIFFUSERS_TOKENIZER)
            self.image_processor = CLIPImageProcessor.from_pretrained(_diffusers_image_processor(folder))
            self.max_tokens = text.config.max_position_embeddings
            self.text_features = lambda inputs: self.text_model(**inputs).text_embeds
            self.image_features = lambda pixels: self.vision_model(pixel_values=pixels).image_embeds
        else:
            from transformers import CLIPModel, CLIPProcessor

            model = CLIPModel.from_pretrained(folder).to(device=device, dtype=dtype).eval()
            processor = CLIPProcessor.from_pretrained(folder)
            self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor
            self.max_tokens = model.config.text_config.max_position_embeddings
            self.text_features = lambda inputs: _embeddings(model.get_text_features(**inputs))
            self.image_features = lambda pixels: _embeddings(model.get_image_features(pixel_values=pixels))

    def scores(self, samples: list[np.ndarray], prompts: list[str]) -> list[float]:
        """Each sample's (uint8 frames, F x H x W x 3) CLIP score against its prompt."""
        import torch

        picks = [keyframe_indices(len(frames), self.keyframes) for frames in samples]
        images = [frames[i] for frames, indices in zip(samples, picks) for i in indices]
        with torch.inference_mode():
            text = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                                  return_tensors="pt").to(self.device)
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            text_embeds = self.text_features(text)
            image_embeds = self.image_features(pixels.to(self.device, self.dtype))
        text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        owner = torch.tensor([sample for sample, indices in enumerate(picks) for _ in indices], device=self.device)
        similarity = 100 * (image_embeds * text_embeds[owner]).sum(dim=-1)
        return [float(similarity[owner == sample].mean()) for sample in range(len(samples))]


def _embeddings(output):
    """transformers returns the projected embeddings as a tensor, or (newer versions) in an output object."""
    return output if hasattr(output, "norm") else output.pooler_output
