"""The generation request and its mapping to and from batch columns: the one place a Request is built.

Validation (pipelines/) writes request columns, stage workers (actors/) read them back, the planner and
the benchmarks build requests from plain values; all of them go through `request_from` so that a new
field or a family's extra parameter is added once. No torch or ray imports here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentmill import schema


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
    # The family's extra per-row parameters (e.g. true_cfg_scale), sorted by name: hashable, so
    # requests can key denoise groups.
    extras: tuple[tuple[str, Any], ...] = ()

    def extra(self, name: str) -> Any:
        return dict(self.extras)[name]


def request_from(values: Mapping[str, Any], extra_names: tuple[str, ...] = ()) -> Request:
    """A Request from anything indexable by column name: a dict, a manifest row, a batch row view."""
    return Request(
        id=str(values[schema.ID]),
        prompt=str(values[schema.PROMPT]),
        negative_prompt=str(values[schema.NEGATIVE_PROMPT]),
        seed=int(values[schema.SEED]),
        num_inference_steps=int(values[schema.STEPS]),
        guidance_scale=float(values[schema.GUIDANCE]),
        height=int(values[schema.HEIGHT]),
        width=int(values[schema.WIDTH]),
        num_frames=int(values[schema.NUM_FRAMES]),
        fps=float(values[schema.FPS] or 0.0),  # null in an image's manifest row
        extras=tuple((name, _plain(values[name])) for name in sorted(extra_names)),
    )


class BatchRow(Mapping):
    """Row `index` of a column batch, read as a mapping (no copy of the batch)."""

    def __init__(self, batch: Mapping[str, Any], index: int) -> None:
        self.batch, self.index = batch, index

    def __getitem__(self, name: str) -> Any:
        return self.batch[name][self.index]

    def __iter__(self):
        return iter(self.batch)

    def __len__(self) -> int:
        return len(self.batch)


def request_at(batch: Mapping[str, Any], index: int, extra_names: tuple[str, ...] = ()) -> Request:
    return request_from(BatchRow(batch, index), extra_names)


def empty_request_columns(size: int, extra_types: Mapping[str, type] = {}) -> dict[str, np.ndarray]:
    """Request and row-state columns for `size` rows, with the family's extra parameters."""
    numpy_type = {str: object, int: np.int64, float: np.float64}
    columns = {name: _empty(size, numpy_type[kind]) for name, kind in schema.REQUEST_COLUMN_TYPES.items()}
    columns.update({name: _empty(size, numpy_type[kind]) for name, kind in extra_types.items()})
    columns[schema.SAMPLE_INDEX] = np.zeros(size, dtype=np.int64)
    columns[schema.PROMPT_TRUNCATED] = np.zeros(size, dtype=bool)
    columns[schema.INPUT_ROW] = _empty(size, object)
    for name in (schema.ERROR_STAGE, schema.ERROR_TYPE, schema.ERROR_MESSAGE):
        columns[name] = np.full(size, "", dtype=object)
    return columns


def write_request(columns: dict[str, np.ndarray], index: int, request: Request) -> None:
    for name in schema.REQUEST_COLUMN_TYPES:
        columns[name][index] = getattr(request, name)
    for name, value in request.extras:
        columns[name][index] = value


def _empty(size: int, dtype) -> np.ndarray:
    return np.full(size, "", dtype=object) if dtype is object else np.zeros(size, dtype=dtype)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
