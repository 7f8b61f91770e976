"""Tensors between stages: torch <-> numpy without loss, per-row packing, and batching.

numpy has no bfloat16, so a bfloat16 tensor travels as its raw 16 bits in a uint16 array (no
conditioning tensor of diffusers is uint16 otherwise) and comes back bit-exact. Per-row tensors of
different lengths (variable-length prompt embeddings and their masks) are zero-padded at the end of
each axis to the group's largest shape, which is how the families' own encoders pad a batch.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

BFLOAT16_BITS = np.uint16


def pack(array: np.ndarray | None) -> bytes:
    """One row's tensor as bytes (numpy's .npy format: dtype, shape, data); None as empty bytes.

    A binary column takes any shape, any dtype and missing values in any row, so the models' tensors
    (pooled or not, masks, variable lengths, negatives only for some rows) need no fixed schema.
    """
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def pack_named(arrays: dict[str, np.ndarray]) -> bytes:
    """Several named arrays of one row as bytes (an .npz; bfloat16 as its bits, like `pack`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.ascontiguousarray(array) if np.ndim(array) else np.asarray(array)
                        for name, array in arrays.items()})
    return buffer.getvalue()


def unpack_named(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16_BITS)
    return tensor.numpy()


def to_torch(array: np.ndarray) -> torch.Tensor:
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == BFLOAT16_BITS:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def as_float32(array: np.ndarray) -> np.ndarray:
    """Floating-point arrays (bfloat16 bits included) as float32; masks and ids unchanged."""
    if array.dtype == BFLOAT16_BITS:
        return to_torch(array).float().numpy()
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    return array


def stack_rows(rows: list[np.ndarray]) -> torch.Tensor:
    """One batch tensor from per-row arrays, zero-padding shorter rows at the end of each axis."""
    import torch

    shape = tuple(max(sizes) for sizes in zip(*(row.shape for row in rows)))
    if all(row.shape == shape for row in rows):
        return torch.stack([to_torch(row) for row in rows])
    padded = []
    for row in rows:
        tensor = to_torch(row)
        pad: list[int] = []
        for have, want in reversed(list(zip(row.shape, shape))):
            pad += [0, want - have]
        padded.append(torch.nn.functional.pad(tensor, pad))
    return torch.stack(padded)


def to_stage(value: torch.Tensor, device, dtype) -> torch.Tensor:
    """On the stage's device; floating-point tensors in its dtype, masks and ids as they are."""
    value = value.to(device)
    return value.to(dtype) if value.is_floating_point() else value


def rows_of(batch: torch.Tensor | list | None, size: int) -> list[np.ndarray | None]:
    """Per-row numpy arrays from a batch tensor (or a list of per-row tensors, or None)."""
    if batch is None:
        return [None] * size
    return [to_numpy(row) for row in batch]


def slerp(a: np.ndarray, b: np.ndarray, t: float, parallel: float = 0.9995) -> np.ndarray:
    """Spherical interpolation of two noise tensors (keeps the noise's norm, unlike a straight line);
    a straight line where the two are nearly parallel and the sphere's arc is ill-defined."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cosine = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) or 1.0))
    if abs(cosine) > parallel:
        mixed = (1 - t) * a64 + t * b64
    else:
        angle = np.arccos(np.clip(cosine, -1.0, 1.0))
        mixed = (np.sin((1 - t) * angle) * a64 + np.sin(t * angle) * b64) / np.sin(angle)
    return mixed.reshape(a.shape).astype(a.dtype)


def blend(a: np.ndarray | None, b: np.ndarray | None, t: float) -> np.ndarray | None:
    """One conditioning tensor between two prompts' (None if either has none).

    Floating-point tensors are interpolated on a straight line after zero-padding the shorter to the
    longer's shape (variable-length embeddings); masks and ids take the union (the longer one's).
    """
    if a is None or b is None:
        return None
    a_t = to_torch(a)
    padded = stack_rows([a, b])
    if not a_t.is_floating_point():
        return to_numpy(padded.max(dim=0).values)
    mixed = (1 - t) * padded[0].float() + t * padded[1].float()
    return to_numpy(mixed.to(a_t.dtype))
