"""The model-family adapter interface.

A family (Stable Diffusion, Wan, ...) knows how to load each stage's components from a diffusers
checkpoint and how to run that stage on a batch. Everything family-specific (scaling factors, latent
normalisation, frame rules) lives in the family's own module; adding a family is one new file in
this package that defines a `Family` subclass with `pipeline_classes` set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from latentmill import schema

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Request:
    """One validated generation request (one row)."""

    id: str
    prompt: str
    negative_prompt: str
    seed: int
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    num_frames: int
    fps: float

    def denoise_group_key(self) -> tuple:
        """Rows with equal keys can share one batched denoiser call."""
        return (self.height, self.width, self.num_frames, self.num_inference_steps, self.guidance_scale)


@dataclass
class EncodedPrompts:
    """Named embedding tensors per row (numpy, fixed shape); plus a per-row truncation flag."""

    tensors: dict[str, np.ndarray]
    truncated: list[bool] = field(default_factory=list)


class Family:
    """Base class of a model family; subclasses fill the class attributes and the stage methods."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]  # diffusers `_class_name`s in model_index.json
    is_video: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]]  # generation defaults for a checkpoint of this family
    # Which components each stage loads (names in model_index.json).
    stage_components: ClassVar[dict[str, tuple[str, ...]]]

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.index = json.loads((self.model_dir / "model_index.json").read_text())
        # Component configs are read once here, so a family object can validate rows on any node
        # (it is pickled into the validation tasks) without the checkpoint being there.
        self.configs: dict[str, dict[str, Any]] = {}
        for name in self.index:
            for file_name in ("config.json", "scheduler_config.json"):
                path = self.model_dir / name / file_name
                if path.exists():
                    self.configs[name] = json.loads(path.read_text())

    def __getstate__(self) -> dict[str, Any]:
        # Loaded stage components stay in the actor that loaded them.
        return {key: self.__dict__[key] for key in ("model_dir", "index", "configs")}

    # ---- facts the driver needs without loading weights ------------------------------------

    def component_config(self, component: str) -> dict[str, Any]:
        return self.configs[component]

    def scheduler_name(self) -> str:
        return str(self.index.get("scheduler", ["", ""])[1])

    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
        raise NotImplementedError

    def check_request(self, request: Request) -> str | None:
        """A reason this request cannot run on this family, or None."""
        multiple = self.size_multiple()
        if request.height % multiple or request.width % multiple:
            return (
                f"height {request.height} x width {request.width} must both be multiples of {multiple} "
                f"for this model; round them to a multiple of {multiple}"
            )
        return None

    def output_frames(self, request: Request) -> int:
        return 1

    def generation_defaults(self) -> dict[str, Any]:
        """A checkpoint may carry its own defaults (the built-in ones do); else the family's."""
        return self.index.get("_latentmill_defaults", self.defaults)

    # ---- stages (run inside the stage actors) -------------------------------------------------

    def prepare_runtime(self, num_gpus: float, dtype: str, threads: int):
        """Set up torch in a stage actor; returns (device, torch dtype) for the stage's load_*."""
        quiet_libraries()
        import torch

        torch.set_num_threads(threads)
        device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu" and dtype == "float16":
            return device, torch.float32  # many CPU kernels lack float16; stay correct
        return device, getattr(torch, dtype)

    def load_encoder(self, device: torch.device, dtype: torch.dtype) -> None:
        """Tokenizer(s) and text encoder(s) only, as a partial diffusers pipeline."""
        self.encode_pipe = load_partial_pipeline(self.model_dir, self.stage_components["encode"], dtype, device)

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]):
        """The family pipeline's own prompt encoding -> (positive, negative) embeddings."""
        raise NotImplementedError

    def max_prompt_tokens(self) -> int:
        return self.encode_pipe.tokenizer.model_max_length

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        import torch

        prompts = [r.prompt for r in requests]
        with torch.inference_mode():
            positive, negative = self.encode_prompt(prompts, [r.negative_prompt for r in requests])
        return EncodedPrompts(
            tensors={
                schema.PROMPT_EMBEDS: positive.float().cpu().numpy(),
                schema.NEGATIVE_PROMPT_EMBEDS: negative.float().cpu().numpy(),
            },
            truncated=prompts_truncated(self.encode_pipe.tokenizer, prompts, self.max_prompt_tokens()),
        )

    def load_denoiser(self, device: torch.device, dtype: torch.dtype) -> None:
        """The denoiser and scheduler only, as a partial diffusers pipeline in `self.denoise_pipe`."""
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

    def denoise(self, requests: list[Request], embeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Final latents per row, for rows of one denoise group (same size, steps and guidance).

        Each row draws its initial noise from its own generator, exactly as the plain pipeline does
        for a batch of one, and keeps that generator for any per-step noise; so a row's result does
        not depend on its batch mates.
        """
        import torch

        pipe = self.denoise_pipe
        device, dtype = pipe.device, self.denoise_dtype
        generators = [cpu_generator(r.seed) for r in requests]
        noise = torch.cat(
            [
                torch.randn((1, *self.latent_shape(r)), generator=g, dtype=self.noise_dtype())
                for r, g in zip(requests, generators)
            ]
        )
        first = requests[0]
        with torch.inference_mode():
            latents = pipe(
                prompt_embeds=torch.from_numpy(embeds[schema.PROMPT_EMBEDS]).to(device, dtype),
                negative_prompt_embeds=torch.from_numpy(embeds[schema.NEGATIVE_PROMPT_EMBEDS]).to(device, dtype),
                latents=noise.to(device),
                generator=generators,
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                output_type="latent",
                return_dict=False,
                **self.denoise_call_kwargs(first),
            )[0]
        return list(latents.float().cpu().numpy())

    def load_decoder(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents of equal shape (B, ...) -> frames float32 in [0, 1], shape (B, F, H, W, 3)."""
        raise NotImplementedError

    def enable_low_memory_decode(self) -> None:
        """Trade speed for memory after an out-of-memory error (diffusers VAEs: tiling, slicing)."""
        for switch in ("enable_tiling", "enable_slicing"):
            if hasattr(self.vae, switch):
                getattr(self.vae, switch)()

    # ---- reference -----------------------------------------------------------------------------

    def reference_pipeline(self, device: str = "cpu"):
        """The plain single-process diffusers pipeline, for correctness checks and the peer benchmark."""
        import diffusers

        pipeline_class = getattr(diffusers, self.index["_class_name"])
        return pipeline_class.from_pretrained(self.model_dir).to(device)

    def reference_generate(self, pipe, request: Request) -> np.ndarray:
        """Frames float32 in [0, 1], (F, H, W, 3), from the plain pipeline with the same parameters."""
        raise NotImplementedError


def quiet_libraries() -> None:
    """Keep per-step progress bars and load chatter of diffusers/transformers out of the job log."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def cpu_generator(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def prompts_truncated(tokenizer, prompts: list[str], max_length: int) -> list[bool]:
    """Which prompts the encoder will cut (they still run; the manifest flags them)."""
    ids = tokenizer(prompts, truncation=False, add_special_tokens=True)["input_ids"]
    return [len(row) > max_length for row in ids]


def load_partial_pipeline(model_dir: Path, keep: tuple[str, ...], dtype, device):
    """A diffusers pipeline with only the `keep` components loaded; every other one is None.

    Each stage actor holds just its own weights, yet calls the family's own pipeline code, so its
    maths is exactly the reference's.
    """
    import diffusers

    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    skipped = {name: None for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list)}
    for name in keep:
        skipped.pop(name, None)
    pipe = pipeline_class.from_pretrained(model_dir, dtype=dtype, **skipped)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
