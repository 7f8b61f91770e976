"""Tiny Flux.1 checkpoint (FluxPipeline): `builtin:tiny-flux`."""

from __future__ import annotations

MODELS: dict = {}
