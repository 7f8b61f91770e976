"""Simulated devices: a model family whose stages take a calibrated time and move real-sized tensors.

It answers "how does the pipeline scale beyond this machine?" without GPUs. Each stage sleeps for
``t0 + batch * t1`` seconds (no CPU is used, so 16 simulated denoiser "devices" fit on a 2-core laptop)
and returns numpy tensors of the shapes and dtypes a real pipeline moves between stages (SDXL latents
4x128x128, Wan-14B text embeddings 512x4096, Wan latents 16x21x60x104, ...), so Ray's object-store
traffic is realistic. Nothing here imports torch or diffusers.

Profiles come from published per-stage shares of one sample's time (text : denoise : VAE, percent)
and are scaled so a denoiser batch takes about ``denoise_batch_seconds`` (>= 1 s, like a GPU batch,
so the per-batch overheads of Ray compare with a GPU's). ``builtin:sim-NAME@SCALE`` multiplies every
time by SCALE (e.g. ``@0.001`` when only the driver's memory matters, not speed).

Device fractions: a simulated actor given ``num_gpus = f < 1`` runs at ``f`` of a device's speed (its
times are divided by ``f``): the conservative time-sharing model that ``latentmill.planning`` also uses.
With ``num_gpus = 0`` (or >= 1) an actor runs at one device's speed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latentmill.models.base import EncodedPrompts, Family
from latentmill.rows import Request
from latentmill.schema import STAGES

_VERSION = "v1"
PIPELINE_CLASS = "LatentmillSimulatedPipeline"
PROFILE_FILE = "simulation.json"

# Share of a stage's batch-of-one time that is fixed per batch (t0); the rest grows with the batch
# (t1 per row). Text encoders are latency-bound at small batches; denoisers and VAEs are compute-bound.
DEFAULT_FIXED_FRACTION = {"encode": 0.5, "denoise": 0.05, "decode": 0.1}
# How far a simulated video pans per frame: motion, so the video encoder works as on real footage.
PAN_PIXELS_PER_FRAME = 2


@dataclass(frozen=True)
class SimProfile:
    """One simulated model: per-stage time shares, tensor shapes and generation defaults."""

    name: str
    description: str
    shares: tuple[float, float, float]  # text : denoise : VAE, percent of one sample's time
    denoise_batch: int  # the reference denoiser batch size
    denoise_batch_seconds: float  # time of one reference denoiser batch (scaled; >= 1 s)
    embed_shape: tuple[int, int]  # (tokens, width) of one prompt embedding
    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 1  # > 1 for video: latent frames = (frames - 1) // factor + 1
    size_multiple: int = 8
    is_video: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed_fraction: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FIXED_FRACTION))
    embed_dtype: str = "float16"  # what the real pipelines compute in
    latent_dtype: str = "float16"

    def stage_costs(self, scale: float = 1.0) -> dict[str, tuple[float, float]]:
        """(t0, t1) seconds per stage: a batch of b takes t0 + b * t1."""
        fixed = self.fixed_fraction
        # Batch-of-one denoiser time such that the reference batch takes denoise_batch_seconds.
        f = fixed["denoise"]
        denoise_one = self.denoise_batch_seconds / (f + (1 - f) * self.denoise_batch)
        sample = denoise_one / (self.shares[1] / 100.0)  # one sample's whole time, batch of one
        costs = {}
        for stage, share in zip(STAGES, self.shares):
            one = sample * share / 100.0
            costs[stage] = (scale * fixed[stage] * one, scale * (1 - fixed[stage]) * one)
        return costs


_IMAGE_512 = {"height": 512, "width": 512, "guidance_scale": 7.5, "fps": 0.0}
_WAN_480P = {"height": 480, "width": 832, "num_frames": 81, "fps": 16.0}

SIMULATED_PROFILES: dict[str, SimProfile] = {
    profile.name: profile
    for profile in (
        SimProfile(
            name="sd15-50",
            description="Stable Diffusion 1.5, 512x512, 50 steps (CLIP-L 77x768, latents 4x64x64)",
            shares=(0.5, 97.0, 2.5),
            denoise_batch=8,
            denoise_batch_seconds=1.2,
            embed_shape=(77, 768),
            latent_channels=4,
            spatial_factor=8,
            defaults={**_IMAGE_512, "num_inference_steps": 50},
        ),
        SimProfile(
            name="sdxl-30",
            description="SDXL, 1024x1024, 30 steps (CLIP-L+G 77x2048, latents 4x128x128)",
            shares=(0.1, 91.0, 9.0),
            denoise_batch=4,
            denoise_batch_seconds=1.2,
            embed_shape=(77, 2048),
            latent_channels=4,
            spatial_factor=8,
            defaults={"height": 1024, "width": 1024, "guidance_scale": 5.0, "fps": 0.0, "num_inference_steps": 30},
        ),
        SimProfile(
            name="flux-28",
            description=(
                "FLUX.1-dev, 1024x1024, 28 steps, guidance-distilled (T5-XXL 512x4096, latents 16x128x128). "
                "Shares from measured and published figures: the transformer 0.706 s per step at batch 4 "
                "on an H200 in bf16 (BENCHMARKS.md section 7), 4.94 s per image; the VAE decoder (SDXL's "
                "architecture but 16 latent channels) 0.085 s per 1024x1024 image (same section, batch 4 "
                "in 0.34 s); T5-XXL's encoder 4.76e9 parameters (google/t5-v1_1-xxl) x 2 x 512 tokens = "
                "4.9 TFLOP at 0.4 of the H200's 989 dense bf16 TFLOP/s, 0.012 s"
            ),
            shares=(0.24, 98.06, 1.70),
            denoise_batch=4,
            denoise_batch_seconds=2.0,
            embed_shape=(512, 4096),
            latent_channels=16,
            spatial_factor=8,
            defaults={"height": 1024, "width": 1024, "guidance_scale": 1.0, "fps": 0.0, "num_inference_steps": 28},
        ),
        SimProfile(
            name="wan-50",
            description="Wan 2.1 14B, 480x832, 81 frames, 50 steps (UMT5 512x4096, latents 16x21x60x104)",
            shares=(0.35, 98.7, 0.9),
            denoise_batch=1,
            denoise_batch_seconds=2.0,
            embed_shape=(512, 4096),
            latent_channels=16,
            spatial_factor=8,
            temporal_factor=4,
            size_multiple=16,
            is_video=True,
            defaults={**_WAN_480P, "guidance_scale": 5.0, "num_inference_steps": 50},
        ),
        SimProfile(
            name="lcm-4",
            description="Latent consistency model (SD1.5 LCM), 512x512, 4 steps (77x768, latents 4x64x64)",
            shares=(0.3, 45.0, 55.0),
            denoise_batch=8,
            denoise_batch_seconds=1.2,
            embed_shape=(77, 768),
            latent_channels=4,
            spatial_factor=8,
            defaults={**_IMAGE_512, "guidance_scale": 1.0, "num_inference_steps": 4},
        ),
        SimProfile(
            name="video-turbo",
            description="Few-step distilled video model, Wan-style 480x832 81 frames, 4 steps (text cost ~0)",
            shares=(0.0, 50.0, 50.0),
            denoise_batch=1,
            denoise_batch_seconds=1.5,
            embed_shape=(512, 4096),
            latent_channels=16,
            spatial_factor=8,
            temporal_factor=4,
            size_multiple=16,
            is_video=True,
            defaults={**_WAN_480P, "guidance_scale": 1.0, "num_inference_steps": 4},
        ),
    )
}
"""The built-in profiles; the shares are the published ones quoted in the benchmark notes."""


def parse_name(name: str) -> tuple[SimProfile, float]:
    """``sim-PROFILE`` or ``sim-PROFILE@SCALE`` -> (profile, time scale)."""
    if not name.startswith("sim-"):
        raise ValueError(f"not a simulated model name: {name!r} (expected sim-PROFILE)")
    base, _, scale_text = name[len("sim-"):].partition("@")
    if base not in SIMULATED_PROFILES:
        known = ", ".join(f"sim-{p}" for p in SIMULATED_PROFILES)
        raise ValueError(f"unknown simulated model {name!r}; known: {known} (optionally @SCALE, e.g. @0.01)")
    scale = 1.0
    if scale_text:
        try:
            scale = float(scale_text)
        except ValueError:
            raise ValueError(f"simulated model {name!r}: the time scale after '@' must be a number") from None
        if not scale > 0:
            raise ValueError(f"simulated model {name!r}: the time scale must be > 0")
    return SIMULATED_PROFILES[base], scale


def _cache_dir() -> Path:
    env = os.environ.get("LATENTMILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "latentmill"


def simulation_spec(name: str) -> dict[str, Any]:
    """Everything the family needs at run time, as plain JSON data."""
    profile, scale = parse_name(name)
    costs = profile.stage_costs(scale)
    return {
        "name": name,
        "profile": asdict(profile),
        "time_scale": scale,
        "stage_costs": {stage: {"t0": t0, "t1": t1} for stage, (t0, t1) in costs.items()},
    }


def ensure_simulated(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of simulated model ``name`` (``sim-sdxl-30``, ``sim-lcm-4@0.01``...), written on first use.

    Written atomically (a temporary sibling renamed into place), so many actors may call it at once.
    It holds a ``model_index.json`` (so it resolves like any diffusers checkpoint) and the profile.
    """
    spec = simulation_spec(name)
    profile = spec["profile"]
    target = Path(cache_dir or _cache_dir()) / "models" / f"{name}-{_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        index = {
            "_class_name": PIPELINE_CLASS,
            "_latentmill_defaults": profile["defaults"],
            "_latentmill_simulation": PROFILE_FILE,
        }
        (tmp / PROFILE_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError as err:  # another process won the race
            if not (target / "model_index.json").is_file():
                raise RuntimeError(f"{target} exists but is not a complete simulated model; delete it") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class Simulated(Family):
    """Stages that sleep ``t0 + batch * t1`` and return tensors of the real shapes."""

    name = "simulated"
    pipeline_classes = (PIPELINE_CLASS,)
    defaults: dict[str, Any] = {}
    conditioning = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        # Kept in `configs`, which the base class pickles into validation tasks and actors.
        self.configs["simulation"] = json.loads((self.model_dir / PROFILE_FILE).read_text())
        self.speed = 1.0
        self._textures: dict[tuple[int, int], np.ndarray] = {}

    # ---- facts ------------------------------------------------------------------------------

    @property
    def spec(self) -> dict[str, Any]:
        return self.configs["simulation"]

    @property
    def profile(self) -> dict[str, Any]:
        return self.spec["profile"]

    @property
    def is_video(self) -> bool:  # type: ignore[override]
        return bool(self.profile["is_video"])

    def stage_cost(self, stage: str) -> tuple[float, float]:
        cost = self.spec["stage_costs"][stage]
        return float(cost["t0"]), float(cost["t1"])

    def size_multiple(self) -> int:
        return int(self.profile["size_multiple"])

    def check_request(self, request: Request) -> str | None:
        temporal = int(self.profile["temporal_factor"])
        if self.is_video and temporal > 1 and (request.num_frames - 1) % temporal:
            return f"num_frames {request.num_frames} must be {temporal}k+1 for this model"
        return super().check_request(request)

    def output_frames(self, request: Request) -> int:
        return request.num_frames if self.is_video else 1

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        profile = self.profile
        spatial = int(profile["spatial_factor"])
        height, width = request.height // spatial, request.width // spatial
        if self.is_video:
            frames = (request.num_frames - 1) // int(profile["temporal_factor"]) + 1
            return (int(profile["latent_channels"]), frames, height, width)
        return (int(profile["latent_channels"]), height, width)

    def scheduler_name(self) -> str:
        return "simulated"

    # ---- runtime: no torch ------------------------------------------------------------------

    def prepare_runtime(self, num_gpus: float, dtype: str, threads: int):
        """No torch, no device: record the share of a device this actor has (see the module doc)."""
        self.speed = num_gpus if 0 < num_gpus < 1 else 1.0
        return "simulated", dtype

    def _sleep(self, stage: str, batch: int) -> None:
        t0, t1 = self.stage_cost(stage)
        seconds = (t0 + batch * t1) / self.speed
        if seconds > 0:
            time.sleep(seconds)

    def load_encoder(self, device, dtype) -> None:
        pass

    def load_denoiser(self, device, dtype) -> None:
        pass

    def load_decoder(self, device, dtype) -> None:
        pass

    def conditioning_columns(self) -> tuple[str, ...]:
        return self.conditioning

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        self._sleep("encode", len(requests))
        shape = (len(requests), *self.profile["embed_shape"])
        dtype = np.dtype(self.profile["embed_dtype"])
        positive = np.zeros(shape, dtype=dtype)
        negative = np.zeros(shape, dtype=dtype)
        positive[:, 0, 0] = [len(r.prompt) % 97 for r in requests]  # rows differ, cheaply
        negative_rows = [row if self.needs_negative(r) else None for row, r in zip(negative, requests)]
        return EncodedPrompts(
            tensors={"prompt_embeds": list(positive), "negative_prompt_embeds": negative_rows},
            truncated=[False] * len(requests),
        )

    def denoise(self, requests: list[Request], conditioning: dict[str, list[np.ndarray | None]],
                noise: list[np.ndarray] | None = None) -> list[np.ndarray]:
        self._sleep("denoise", len(requests))
        dtype = np.dtype(self.profile["latent_dtype"])
        # Deterministic per row (its seed), independent of its batch mates; memset-cheap.
        return [np.full(self.latent_shape(r), (r.seed % 1000) / 1000.0, dtype=dtype) for r in requests]

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        """Frames at the requested output size: (B, F, H, W, 3) float32 in [0, 1].

        Media encoding and the write of real-sized frames are the host work a decode actor (or a
        whole-pipeline peer) does while it holds its device, so they must cost what they cost: a
        1024x1024 PNG, an 81-frame 480p MP4. The frames are a textured gradient (PNG: about 2 MB, like
        a photograph) panning over time (video), shifted per row by its latents so rows differ; the
        texture is made once per size, so only the copy-out of the frames is paid per row, as it is
        for a real VAE's output. Tests ask for small sizes to stay fast.
        """
        self._sleep("decode", len(latents))
        out = np.empty((len(latents), *self._frames_shape(requests[0])), dtype=np.float32)
        levels = np.asarray(latents.reshape(len(latents), -1)[:, 0], dtype=np.float32)
        for row, (request, level) in enumerate(zip(requests, levels)):
            texture = self._texture(request.height, request.width + PAN_PIXELS_PER_FRAME * out.shape[1])
            offset = int(abs(level) * 1000) % PAN_PIXELS_PER_FRAME
            for frame in range(out.shape[1]):
                start = offset + PAN_PIXELS_PER_FRAME * frame
                out[row, frame] = texture[:, start:start + request.width]
        return out

    def _frames_shape(self, request: Request) -> tuple[int, int, int, int]:
        return (self.output_frames(request), request.height, request.width, 3)

    def _texture(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._textures:
            y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
            x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
            smooth = (0.5 * y + 0.3 * x + 0.2 * np.sin(20 * x * y + np.arange(3, dtype=np.float32))) % 1
            grain = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
            self._textures[key] = np.clip(smooth + 0.08 * grain, 0, 1)
        return self._textures[key]

    def reference_generator(self, seed: int) -> int:
        return int(seed)

    def reference_pipeline(self, device: str = "cpu", dtype=None) -> "SimulatedPipeline":
        """The whole simulated pipeline in one object, called like a diffusers pipeline: the peer's model."""
        return SimulatedPipeline(self)


@dataclass
class SimulatedOutput:
    """What a diffusers pipeline returns (``images`` or ``frames``), plus the seconds of each stage's
    simulated device time, so a benchmark can tell the denoiser's busy time from the rest."""

    images: np.ndarray | None
    frames: np.ndarray | None
    stage_seconds: dict[str, float]


class SimulatedPipeline:
    """encode, denoise and decode of a `Simulated` family in series, at one device's speed each."""

    def __init__(self, family: Simulated) -> None:
        self.family = family

    def set_progress_bar_config(self, **_: Any) -> None:
        """Nothing to configure: kept so the peer calls it as on a diffusers pipeline."""

    def __call__(self, prompt: list[str], negative_prompt: list[str], height: int, width: int,
                 num_inference_steps: int, guidance_scale: float, generator: list[int], output_type: str = "np",
                 num_frames: int = 1, fps: float = 0.0) -> SimulatedOutput:
        family = self.family
        requests = [Request(f"peer-{i}", p, n, int(seed), num_inference_steps, guidance_scale, height, width,
                            num_frames if family.is_video else 1, fps)
                    for i, (p, n, seed) in enumerate(zip(prompt, negative_prompt, generator))]
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        encoded = family.encode(requests)
        seconds["encode"] = time.perf_counter() - started
        started = time.perf_counter()
        latents = family.denoise(requests, encoded.tensors)
        seconds["denoise"] = time.perf_counter() - started
        started = time.perf_counter()
        frames = family.decode(np.stack(latents), requests)
        seconds["decode"] = time.perf_counter() - started
        if family.is_video:
            return SimulatedOutput(images=None, frames=frames, stage_seconds=seconds)
        return SimulatedOutput(images=frames[:, 0], frames=None, stage_seconds=seconds)
