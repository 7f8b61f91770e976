"""The model-family adapter interface.

A family knows how to load each stage's components from a diffusers checkpoint and how to run that
stage on a batch. Two kinds implement it: `modular.ModularFamily` (any pipeline with a Modular
Diffusers block set: the blocks declare each stage's components and the tensors that cross between
stages) and `standard.StandardFamily` (a plain diffusers pipeline loaded partially per stage, for
families without blocks). A family file only adds what neither says: validation rules, defaults,
extra per-row parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from latentmill.rows import Request

# Component names of the denoising networks in a diffusers checkpoint (Wan 2.2's second expert included).
DENOISER_COMPONENTS = ("unet", "transformer", "transformer_2")

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class EncodedPrompts:
    """Conditioning tensors by name, one numpy array per row (shapes may differ between rows, e.g.
    variable-length embeddings), None where a row has no such tensor (no negatives without guidance);
    plus a per-row truncation flag."""

    tensors: dict[str, list[np.ndarray | None]]
    truncated: list[bool] = field(default_factory=list)


@dataclass
class AudioTrack:
    """A video's sound: float32 samples in [-1, 1], shape (channels, samples), at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


class Family:
    """Base class of a model family; subclasses fill the class attributes and the stage methods."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]  # diffusers `_class_name`s in model_index.json
    is_video: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]]  # generation defaults for a checkpoint of this family
    # Extra per-row parameters: name -> (type, default). Each is a job default (`defaults:` section of
    # the job file), an optional override column of the prompt table and a manifest column.
    extra_parameters: ClassVar[dict[str, tuple[type, Any]]] = {}
    interpolates: ClassVar[bool] = False  # implements initial_noise and denoise(noise=...)
    # Named latents besides `latents` that the denoise stage hands to the decode stage (e.g. an audio track's);
    # such a family's denoise returns one dict per row, `latents` and these by name.
    extra_latent_columns: ClassVar[tuple[str, ...]] = ()
    has_audio: ClassVar[bool] = False  # its videos have sound: decode_audio makes it from the extra latents

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

    def extra_types(self) -> dict[str, type]:
        """The extra per-row parameters' types, by name (for request columns and override checks)."""
        return {name: kind for name, (kind, _) in self.extra_parameters.items()}

    def component_config(self, component: str) -> dict[str, Any]:
        return self.configs[component]

    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: an AutoencoderKL's 2 ** (levels - 1), a Wan-layout VAE's
        (Qwen-Image's) 2 ** its downsamplings."""
        config = self.component_config("vae")
        if "temperal_downsample" in config:
            return 2 ** len(config["temperal_downsample"])
        return 2 ** (len(config["block_out_channels"]) - 1)

    def latent_channels(self) -> int | None:
        """Channels of the VAE's latent space (None when the checkpoint has no VAE config)."""
        vae = self.configs.get("vae", {})
        return vae.get("latent_channels") or vae.get("z_dim")

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
        """The family's defaults, overridden by the checkpoint's own (the built-in ones carry some)."""
        return {**self.defaults, **self.index.get("_latentmill_defaults", {})}

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

    def conditioning_columns(self) -> tuple[str, ...]:
        """Names of the tensors the encode stage hands to the denoise stage."""
        raise NotImplementedError

    def needs_negative(self, request: Request) -> bool:
        """Whether this row's guidance uses negative (unconditional) embeddings."""
        return request.guidance_scale > 1

    def encoding_key(self, request: Request) -> tuple:
        """What decides a row's conditioning tensors (the embedding cache's key, with the encoders' hash)."""
        return (request.prompt, request.negative_prompt if self.needs_negative(request) else None,
                request.extras)

    def denoise_group_key(self, request: Request) -> tuple:
        """Rows with equal keys can share one batched denoiser call."""
        return (request.height, request.width, request.num_frames, request.num_inference_steps,
                request.guidance_scale, request.extras)

    def load_encoder(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        """Conditioning tensors per row, in the encoder's dtype; negatives only for rows that need them."""
        raise NotImplementedError

    def load_denoiser(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def denoise(self, requests: list[Request], conditioning: dict[str, list[np.ndarray | None]],
                noise: list[np.ndarray] | None = None) -> list[np.ndarray] | list[dict[str, np.ndarray]]:
        """Final latents (float32) per row, for rows of one denoise group.

        Each row draws its initial noise from its own generator, exactly as the plain pipeline does
        for a batch of one, and keeps that generator for any per-step noise; so a row's result does
        not depend on its batch mates. `noise` (rows' initial noise in `initial_noise`'s layout, e.g.
        interpolated between two seeds) replaces the drawn noise.
        """
        raise NotImplementedError

    # ---- a denoiser of two experts in two pools (stages.denoise_2) ----------------------------

    def denoise_split_problem(self) -> str | None:
        """Why this model's denoising cannot be split over two pools, one per expert; None if it can."""
        return "it has a single denoiser (two denoise pools are for models with two experts, e.g. Wan 2.2 A14B)"

    def load_denoiser_expert(self, device: torch.device, dtype: torch.dtype, expert: int) -> None:
        """Load expert 0 (the steps from the start) or expert 1 (the rest) and the scheduler only."""
        raise NotImplementedError

    def denoise_first_expert(self, requests: list[Request],
                             conditioning: dict[str, list[np.ndarray | None]]) -> list[bytes]:
        """Run the first expert's steps from each row's own noise; per row, what the second expert needs to
        go on exactly (the latents and the scheduler's state), packed."""
        raise NotImplementedError

    def denoise_second_expert(self, requests: list[Request], conditioning: dict[str, list[np.ndarray | None]],
                              handover: list[bytes]) -> list[np.ndarray]:
        """The remaining steps from the first expert's handover; final latents (float32) per row."""
        raise NotImplementedError

    def initial_noise(self, request: Request) -> np.ndarray:
        """The initial noise the plain pipeline draws for this row's seed, float32, in the family's
        unpacked latent layout (what interpolation blends); families without it cannot interpolate."""
        raise NotImplementedError(f"the {self.name} family does not support explicit initial noise yet")

    def load_decoder(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        """Latents of equal shape (B, ...) -> frames float32 in [0, 1], shape (B, F, H, W, 3)."""
        raise NotImplementedError

    def decode_audio(self, latents: dict[str, np.ndarray], requests: list[Request]) -> list[AudioTrack]:
        """Each row's sound track from its extra latents by name (batched as `decode`'s latents)."""
        raise NotImplementedError

    def loaded_modules(self) -> dict[str, Any]:
        """The torch modules this process holds, by component name (what a stage actor loaded)."""
        return {}

    def speed_up_denoiser(self, compile: bool, attention_backend: str | None) -> None:
        """Apply the denoise pool's speed options to the denoiser modules this process loaded."""
        for name, module in self.loaded_modules().items():
            if name not in DENOISER_COMPONENTS:
                continue
            if attention_backend:
                if not hasattr(module, "set_attention_backend"):
                    raise ValueError(f"{type(module).__name__} has no attention backends; unset "
                                     "stages.denoise_options.attention_backend")
                module.set_attention_backend(attention_backend)
            if compile:
                if getattr(module, "_repeated_blocks", None):
                    module.compile_repeated_blocks(fullgraph=True)
                else:
                    module.compile()

    def low_memory_decode(self, on: bool, latent_size: tuple[int, int] | None = None) -> None:
        """Tiled and sliced VAE decoding on or off (diffusers VAEs' enable_/disable_ tiling and slicing;
        the video VAEs' tiling is spatial and temporal where they have both): less memory, slower.

        With `latent_size`, an image VAE's tiles are also made smaller than the latents: its default tile
        is its whole training size (SDXL: 1024 pixels), which would leave such an image in one piece."""
        vae = getattr(self, "vae", None)
        for switch in ("tiling", "slicing"):
            method = getattr(vae, f"{'enable' if on else 'disable'}_{switch}", None)
            if method is not None:
                method()
        if hasattr(vae, "tile_latent_min_size"):
            if not hasattr(self, "_default_tiles"):
                self._default_tiles = (vae.tile_sample_min_size, vae.tile_latent_min_size)
            sample, latent = self._default_tiles
            while on and latent_size is not None and latent >= min(latent_size) and latent >= 8:
                sample, latent = sample // 2, latent // 2  # halved until the latents span more than one tile
            vae.tile_sample_min_size, vae.tile_latent_min_size = sample, latent

    # ---- reference -----------------------------------------------------------------------------

    def reference_pipeline(self, device: str = "cpu", dtype: torch.dtype | None = None):
        """The plain single-process diffusers pipeline, for correctness checks and the peer benchmark."""
        import diffusers

        pipeline_class = getattr(diffusers, self.index["_class_name"])
        return pipeline_class.from_pretrained(self.model_dir, torch_dtype=dtype).to(device)

    def reference_generator(self, seed: int):
        """A row's ``generator`` argument for the reference pipeline: a seeded CPU torch generator."""
        return cpu_generator(seed)

    def reference_kwargs(self, request: Request) -> dict[str, Any]:
        """The family's own arguments of the plain pipeline's call for this row."""
        kwargs = dict(request.extras)
        if self.is_video:
            kwargs["num_frames"] = request.num_frames
        return kwargs

    def reference_guidance(self, pipe, request: Request) -> dict[str, Any]:
        """The row's guidance for the plain pipeline: its call's argument (or, for a pipeline with a
        guider component, a guider set to it)."""
        return {"guidance_scale": request.guidance_scale}

    def reference_output(self, pipe, request: Request):
        """The plain pipeline's whole output for this row (numpy frames), with the same parameters."""
        kwargs = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            height=request.height,
            width=request.width,
            num_inference_steps=request.num_inference_steps,
            generator=cpu_generator(request.seed),
            output_type="np",
        )
        return pipe(**{**kwargs, **self.reference_guidance(pipe, request), **self.reference_kwargs(request)})

    def reference_generate(self, pipe, request: Request) -> np.ndarray:
        """Frames float32 in [0, 1], (F, H, W, 3), from the plain pipeline with the same parameters."""
        import numpy as np

        output = self.reference_output(pipe, request)
        frames = output.frames[0] if self.is_video else output.images[0][None]
        return np.asarray(frames, dtype=np.float32)


class TemporalVAEFamily:
    """Mixed into a video family whose VAE compresses time and space by `vae_factors()` (temporal, spatial):
    frame counts of temporal x k + 1, sizes in multiples of the spatial factor times the transformer's patch."""

    def vae_factors(self) -> tuple[int, int]:
        raise NotImplementedError

    def vae_scale_factor(self) -> int:
        return self.vae_factors()[1]

    def size_multiple(self) -> int:
        return self.vae_scale_factor() * self.component_config("transformer").get("patch_size", 1)

    def check_request(self, request: Request) -> str | None:
        return frame_count_problem(request.num_frames, self.vae_factors()[0]) or super().check_request(request)

    def output_frames(self, request: Request) -> int:
        return request.num_frames


def frame_count_problem(num_frames: int, step: int) -> str | None:
    """Why a video model that makes step * k + 1 frames (a temporal VAE's compression, or a multiple
    of it) cannot make `num_frames`, naming the nearest valid counts; or None."""
    if (num_frames - 1) % step == 0:
        return None
    below = (num_frames - 1) // step * step + 1
    return f"num_frames {num_frames} must be {step}k+1 for this model; use {below} or {below + step}"


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
