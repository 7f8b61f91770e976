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

    def columns(self) -> dict[str, Any]:
        """The request as manifest columns: every request column, then the family's extra parameters."""
        return {name: getattr(self, name) for name in schema.REQUEST_COLUMNS} | dict(self.extras)


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
    columns[schema.ATTEMPT] = np.zeros(size, dtype=np.int64)
    for name in (schema.ERROR_STAGE, schema.ERROR_TYPE, schema.ERROR_MESSAGE):
        columns[name] = np.full(size, "", dtype=object)
    return columns


def write_request(columns: dict[str, np.ndarray], index: int, request: Request) -> None:
    for name, value in request.columns().items():
        columns[name][index] = value


def _empty(size: int, dtype) -> np.ndarray:
    return np.full(size, "", dtype=object) if dtype is object else np.zeros(size, dtype=dtype)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


_SAMPLE_FIELDS = (schema.ID, schema.SEED, schema.SAMPLE_INDEX, schema.ERROR_STAGE, schema.ERROR_TYPE,
                  schema.ERROR_MESSAGE)


def fold_samples(columns: dict[str, np.ndarray], groups: list[list[int]]) -> dict[str, np.ndarray]:
    """Per-sample rows -> one row per prompt (`groups`: the positions of each prompt's samples).

    The prompt row is the first sample that still needs work (else the first sample), with every
    sample's own id, seed, index and state in a JSON `samples` column; a prompt none of whose samples
    needs work keeps its first sample's state, so no stage touches it.
    """
    import json

    errors = columns[schema.ERROR_STAGE]
    firsts = [next((i for i in group if not errors[i]), group[0]) for group in groups]
    out = {name: values[firsts] for name, values in columns.items()}
    samples = np.empty(len(groups), dtype=object)
    for row, group in enumerate(groups):
        samples[row] = json.dumps([{name: _plain(columns[name][i]) for name in _SAMPLE_FIELDS} for i in group])
    out[schema.SAMPLES] = samples
    return out


def unfold_samples(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prompt rows -> one row per sample, each sharing its prompt row's conditioning; the inverse of
    `fold_samples`. A sample takes its own state, else its prompt row's (an encode error fails every
    sample); only a prompt's first pending sample keeps `encoded` true, and each sample gets 1/N of the
    prompt's encode seconds. Batches without `samples` pass."""
    import json

    if schema.SAMPLES not in batch:
        return batch
    samples = [json.loads(text) for text in batch[schema.SAMPLES]]
    counts = np.array([len(row) for row in samples])
    index = np.repeat(np.arange(len(samples)), counts)
    out = {name: np.asarray(values)[index] for name, values in batch.items() if name != schema.SAMPLES}
    encode_seconds = schema.seconds_column(schema.STAGE_ENCODE)
    if encode_seconds in out:  # each sample's share of its prompt's encoding, so the shares still add up
        out[encode_seconds] = out[encode_seconds] / counts[index]
    position = 0
    for row, row_samples in enumerate(samples):
        counted = False
        for sample in row_samples:
            own_state = bool(sample[schema.ERROR_STAGE])
            for name in _SAMPLE_FIELDS:
                if name in (schema.ERROR_STAGE, schema.ERROR_TYPE, schema.ERROR_MESSAGE) and not own_state:
                    continue  # a pending sample shares its prompt row's outcome
                out[name][position] = sample[name]
            if schema.ENCODED in out:
                encoded = bool(batch[schema.ENCODED][row]) and not own_state and not counted
                out[schema.ENCODED][position] = encoded
                counted = counted or encoded
            position += 1
    return out
