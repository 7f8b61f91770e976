"""CLIP score of decoded frames against their prompt, for the quality gate's `clip_score`.

The score is 100 x the cosine similarity of CLIP's image and text embeddings (the usual CLIP score, as
torchmetrics computes it, without its clamp at 0). A video scores the mean over a few evenly spaced
keyframes. The model is a transformers CLIP folder: a `CLIPModel` and its `CLIPProcessor`, both saved
with `save_pretrained` (locally or under an s3:// URI, copied once per node like a checkpoint).
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
SAVE_HINT = ("save the model with CLIPModel.save_pretrained(DIR) and its processor with "
             "CLIPProcessor.save_pretrained(DIR)")


def resolve_clip(path: str, storage_options: dict[str, Any] | None = None) -> Path:
    """The local folder of the CLIP model `path` (a folder or URI); ModelError saying what is wrong."""
    what = f"the CLIP model {path!r} (quality.clip_score.model)"
    local = materialize(path, storage_options, marker="config.json")
    if not local.is_dir():
        raise ModelError(f"{what} does not exist (looked for folder {local}); {SAVE_HINT}")
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


class ClipScorer:
    """A CLIP model loaded once (in a decode actor), scoring batches of decoded samples."""

    def __init__(self, folder: Path, device, dtype, keyframes: int = 4) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(folder).to(device=device, dtype=dtype).eval()
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.device, self.dtype, self.keyframes = device, dtype, keyframes
        self.max_tokens = self.model.config.text_config.max_position_embeddings

    def scores(self, samples: list[np.ndarray], prompts: list[str]) -> list[float]:
        """Each sample's (uint8 frames, F x H x W x 3) CLIP score against its prompt."""
        import torch

        picks = [keyframe_indices(len(frames), self.keyframes) for frames in samples]
        images = [frames[i] for frames, indices in zip(samples, picks) for i in indices]
        with torch.inference_mode():
            text = self.processor.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                                            return_tensors="pt").to(self.device)
            pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            text_embeds = _embeddings(self.model.get_text_features(**text))
            image_embeds = _embeddings(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        owner = torch.tensor([sample for sample, indices in enumerate(picks) for _ in indices], device=self.device)
        similarity = 100 * (image_embeds * text_embeds[owner]).sum(dim=-1)
        return [float(similarity[owner == sample].mean()) for sample in range(len(samples))]


def _embeddings(output):
    """transformers returns the projected embeddings as a tensor, or (newer versions) in an output object."""
    return output if hasattr(output, "norm") else output.pooler_output
