"""Families without a Modular Diffusers block set: the plain pipeline, loaded partially per stage.

Each stage actor loads the family's own diffusers pipeline class with only its stage's components
(every other one None) and calls the pipeline's own prompt encoding and denoising loop, so its maths
is exactly the reference's. The conditioning is the pipeline's `prompt_embeds` and, for rows whose
guidance needs it, `negative_prompt_embeds`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latentmill.models import tensors
from latentmill.models.base import EncodedPrompts, Family, cpu_generator
from latentmill.rows import Request

PROMPT_EMBEDS = "prompt_embeds"
NEGATIVE_PROMPT_EMBEDS = "negative_prompt_embeds"


class StandardFamily(Family):
    interpolates = True
    # Which components each stage loads (names in model_index.json).
    stage_components: ClassVar[dict[str, tuple[str, ...]]]
    # The length the pipeline's own __call__ pads and truncates prompts to (None: the tokenizer's).
    max_sequence_length: ClassVar[int | None] = None
    # A video family's VAE class in diffusers (its decode stage loads that and a VideoProcessor).
    vae_class: ClassVar[str | None] = None

    def conditioning_columns(self) -> tuple[str, ...]:
        return (PROMPT_EMBEDS, NEGATIVE_PROMPT_EMBEDS)

    def load_encoder(self, device, dtype) -> None:
        self.encode_pipe = load_partial_pipeline(self.model_dir, self.stage_components["encode"], dtype, device)

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str] | None) -> dict[str, Any]:
        """The family pipeline's own prompt encoding: a batch tensor per conditioning column (negatives
        None without `negative_prompts`). Here: a T5-style `encode_prompt` returning (positive, negative)."""
        positive, negative = self._pipeline_encode_prompt(prompts, negative_prompts)
        return {PROMPT_EMBEDS: positive, NEGATIVE_PROMPT_EMBEDS: negative}

    def _pipeline_encode_prompt(self, prompts: list[str], negative_prompts: list[str] | None) -> tuple:
        pipe = self.encode_pipe
        return pipe.encode_prompt(
            prompt=prompts,
            negative_prompt=negative_prompts,
            do_classifier_free_guidance=negative_prompts is not None,
            max_sequence_length=self.max_sequence_length,
            device=pipe.device,
        )

    def max_prompt_tokens(self) -> int:
        return self.max_sequence_length or self.encode_pipe.tokenizer.model_max_length

    def load_decoder(self, device, dtype) -> None:
        import diffusers
        from diffusers.video_processor import VideoProcessor

        vae_class = getattr(diffusers, self.vae_class)
        self.vae = vae_class.from_pretrained(self.model_dir, subfolder="vae", dtype=dtype).to(device)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor())

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        import torch

        columns: dict[str, list[np.ndarray | None]] = {name: [None] * len(requests)
                                                       for name in self.conditioning_columns()}
        for with_negative in (True, False):
            rows = [i for i, r in enumerate(requests) if self.needs_negative(r) == with_negative]
            if not rows:
                continue
            negatives = [requests[i].negative_prompt for i in rows] if with_negative else None
            with torch.inference_mode():
                encoded = self.encode_prompt([requests[i].prompt for i in rows], negatives)
            for name, batch in encoded.items():
                if batch is None:  # negatives of rows without guidance
                    continue
                for i, value in zip(rows, tensors.rows_of(batch, len(rows))):
                    columns[name][i] = value
        prompts = [r.prompt for r in requests]
        return EncodedPrompts(
            tensors=columns,
            truncated=prompts_truncated(self.encode_pipe.tokenizer, prompts, self.max_prompt_tokens()),
        )

    def load_denoiser(self, device, dtype) -> None:
        self.denoise_pipe = load_partial_pipeline(self.model_dir, self.stage_components["denoise"], dtype, device)
        self.denoise_dtype = dtype

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        """Shape of one row's initial noise, without the batch axis."""
        raise NotImplementedError

    def denoise_call_kwargs(self, request: Request) -> dict[str, Any]:
        """Family-specific arguments of the pipeline call for this group of rows."""
        return {}

    def noise_dtype(self):
        """The dtype the family's own pipeline draws its initial noise in (parity with it)."""
        import torch

        return torch.float32

    def initial_noise(self, request: Request) -> np.ndarray:
        import torch

        # float32 here (the encode actor has no denoiser dtype); the denoise stage casts it as it casts its own
        drawn = torch.randn((1, *self.latent_shape(request)), generator=cpu_generator(request.seed))
        return drawn[0].numpy()

    def pipeline_latents(self, noise, request: Request):
        """Rows' initial noise (latent_shape's layout) in the form the pipeline takes as `latents`."""
        return noise

    def final_latents(self, latents, request: Request):
        """The pipeline's output latents (output_type "latent") as the decode stage takes them."""
        return latents

    def denoise(self, requests, conditioning, noise=None):
        import torch

        pipe = self.denoise_pipe
        device, dtype = pipe.device, self.denoise_dtype
        generators = [cpu_generator(r.seed) for r in requests]
        if noise is None:
            noise = torch.cat(
                [
                    torch.randn((1, *self.latent_shape(r)), generator=g, dtype=self.noise_dtype())
                    for r, g in zip(requests, generators)
                ]
            )
        else:
            noise = torch.stack([torch.from_numpy(row) for row in noise]).to(self.noise_dtype())
        first = requests[0]
        embeds = {}
        for name, rows in conditioning.items():
            if all(row is not None for row in rows):
                embeds[name] = tensors.to_stage(tensors.stack_rows(rows), device, dtype)
        with torch.inference_mode():
            latents = pipe(
                **embeds,
                latents=self.pipeline_latents(noise, first).to(device),
                generator=generators,
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                output_type="latent",
                return_dict=False,
                **self.denoise_call_kwargs(first),
            )[0]
        return list(self.final_latents(latents, first).float().cpu().numpy())

    def loaded_modules(self) -> dict[str, Any]:
        import torch

        found = {}
        for attribute in ("encode_pipe", "denoise_pipe"):
            pipe = getattr(self, attribute, None)
            if pipe is not None:
                found.update({name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)})
        if getattr(self, "vae", None) is not None:
            found["vae"] = self.vae
        return found


def prompts_truncated(tokenizer, prompts: list[str], max_length: int) -> list[bool]:
    """Which prompts the encoder will cut (they still run; the manifest flags them)."""
    ids = tokenizer(prompts, truncation=False, add_special_tokens=True)["input_ids"]
    return [len(row) > max_length for row in ids]


def load_partial_pipeline(model_dir: Path, keep: tuple[str, ...], dtype, device):
    """A diffusers pipeline with only the `keep` components loaded; every other one is None."""
    import diffusers

    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    skipped = {name: None for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list)}
    for name in keep:
        skipped.pop(name, None)
    pipe = pipeline_class.from_pretrained(model_dir, dtype=dtype, **skipped)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
