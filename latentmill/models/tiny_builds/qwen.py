"""Tiny Qwen-Image (QwenImagePipeline) and Z-Image (ZImagePipeline) checkpoints: `builtin:tiny-qwen-image`, `builtin:tiny-z-image`."""

from __future__ import annotations

MODELS: dict = {}
