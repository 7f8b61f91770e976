"""Tiny Stable Diffusion XL checkpoint (StableDiffusionXLPipeline): `builtin:tiny-sdxl`."""

from __future__ import annotations

MODELS: dict = {}
