"""Tiny Stable Diffusion 3.5 checkpoint (StableDiffusion3Pipeline): `builtin:tiny-sd3`."""

from __future__ import annotations

MODELS: dict = {}
