"""Saved latents: one safetensors object per output, with how it was made in its metadata.

The denoiser is nearly all of an output's cost; keeping its result lets a run be decoded again (another
VAE, format or tiling; or after a decode failure) without denoising again. The header alone (a few
hundred bytes at the start of the object) says which model and shape the latents belong to, so a job
can refuse mismatched latents before any model loads.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

TENSOR = "latents"
LATENTS_FOLDER = "latents"
EXTENSION = "safetensors"


def encode_latents(latents: np.ndarray, metadata: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> bytes:
    """Bytes of a safetensors file holding `latents` (and a family's further latents by name, e.g. its
    sound's, so a decode job remakes the sound too); metadata values are stored as JSON text."""
    from safetensors.numpy import save

    text = {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    text["latent_shape"] = json.dumps(list(latents.shape))
    text["dtype"] = str(latents.dtype)
    tensors = {name: np.ascontiguousarray(value) for name, value in (extra or {}).items()}
    return save({**tensors, TENSOR: np.ascontiguousarray(latents)}, metadata=text)


def decode_latents(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    latents, _, metadata = decode_all_latents(data)
    return latents, metadata


def decode_all_latents(data: bytes) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """The latents, the further latents saved with them by name, and the metadata."""
    from safetensors.numpy import load

    tensors = load(data)
    latents = tensors.pop(TENSOR)
    return latents, tensors, header_metadata(data[: 8 + _header_length(data[:8])])


def read_metadata(fs, path: str) -> dict[str, str]:
    """The metadata of a saved latents object, reading only its header."""
    with fs.open(path, "rb") as handle:
        prefix = handle.read(8)
        return header_metadata(prefix + handle.read(_header_length(prefix)))


def header_metadata(header: bytes) -> dict[str, str]:
    return json.loads(header[8:]).get("__metadata__", {})


def _header_length(prefix: bytes) -> int:
    if len(prefix) < 8:
        raise ValueError("not a safetensors file (shorter than its 8-byte header length)")
    (length,) = struct.unpack("<Q", prefix)
    if length > 100_000_000:
        raise ValueError("not a safetensors file (implausible header length)")
    return length
