"""Raw prompt-table rows -> generation requests, or error rows that say what to fix.

Runs as plain Ray tasks before any model stage. Nothing here raises for a bad row: a bad row becomes
an error row, and the job goes on with the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentmill import schema
from latentmill.config import GenerationDefaults, Limits
from latentmill.models.base import Family
from latentmill.pipelines.inputs import READ_ERROR, READ_POSITION
from latentmill.pipelines.ledger import shared_id_set
from latentmill.rows import Request, empty_request_columns, fold_samples, request_from, write_request

SEED_LIMIT = 2**63


@dataclass(frozen=True)
class RowRules:
    """Everything validation needs, resolved once on the driver and shipped to the tasks."""

    prompt_column: str
    id_column: str
    defaults: dict[str, Any]  # every request field but id/prompt/seed has a concrete value here
    job_seed: int
    limits: Limits
    family: Family
    samples_per_prompt: int = 1
    keep_columns: tuple[str, ...] = ()  # input columns copied, as they are, into the manifest


class DefaultsError(ValueError):
    """Job defaults the model cannot take; the message names the parameter and the fix."""


def resolve_defaults(job: GenerationDefaults, model_defaults: dict[str, Any],
                     extra_parameters: dict[str, tuple[type, Any]] | None = None) -> dict[str, Any]:
    """Job defaults where given, else the model's own; the family's extra parameters included."""
    extra_parameters = extra_parameters or {}
    resolved = {schema.NEGATIVE_PROMPT: job.negative_prompt}
    for name in (schema.STEPS, schema.GUIDANCE, schema.HEIGHT, schema.WIDTH, schema.NUM_FRAMES, schema.FPS):
        value = getattr(job, name)
        resolved[name] = value if value is not None else model_defaults.get(name, 1 if name == schema.NUM_FRAMES else 0)
    unknown = sorted(set(job.model_parameters) - set(extra_parameters))
    if unknown:
        known = ", ".join(sorted(extra_parameters)) or "none"
        raise DefaultsError(f"defaults.model_parameters has {', '.join(unknown)}, which this model does not take "
                            f"(its extra parameters: {known})")
    for name, (kind, family_default) in extra_parameters.items():
        value = job.model_parameters.get(name, model_defaults.get(name, family_default))
        try:
            resolved[name] = _coerce(name, value, kind)
        except RowError as exc:
            raise DefaultsError(f"defaults.model_parameters: {exc}") from None
    return resolved


def derived_id(prompt: str, overrides: dict[str, Any]) -> str:
    """A stable id for a row without one: same row content, same id, on every run of the table."""
    canonical = json.dumps([prompt, sorted(overrides.items())], ensure_ascii=False, default=str)
    return "p" + hashlib.sha256(canonical.encode()).hexdigest()[:20]


def derived_seed(job_seed: int, row_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{job_seed}:{row_id}".encode()).digest()[:8], "big") % 2**31


class RowError(ValueError):
    """A row that cannot run; message names the column and the fix."""


def _coerce(column: str, value: Any, kind: type) -> Any:
    """Accept a per-row override of the right type, or explain which type was expected."""
    if kind is str:
        if isinstance(value, str):
            return value
        raise RowError(f"column {column!r} must be text, got {value!r} ({type(value).__name__})")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RowError(f"column {column!r} must be a number, got {value!r} ({type(value).__name__})")
    if kind is int:
        if isinstance(value, (float, np.floating)) and not float(value).is_integer():
            raise RowError(f"column {column!r} must be a whole number, got {value!r}")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise RowError(f"column {column!r} must be a finite number, got {value!r}")
    return value


def _check_limits(request: Request, limits: Limits, family: Family) -> None:
    if request.num_inference_steps < 1:
        raise RowError(f"num_inference_steps must be >= 1, got {request.num_inference_steps}")
    if request.num_inference_steps > limits.max_steps:
        raise RowError(f"num_inference_steps {request.num_inference_steps} exceeds limits.max_steps {limits.max_steps}")
    if request.guidance_scale < 0:
        raise RowError(f"guidance_scale must be >= 0, got {request.guidance_scale}")
    if request.height < 1 or request.width < 1:
        raise RowError(f"height and width must be positive, got {request.height} x {request.width}")
    if request.height > limits.max_height or request.width > limits.max_width:
        raise RowError(
            f"size {request.height} x {request.width} exceeds limits.max_height x max_width "
            f"{limits.max_height} x {limits.max_width}; lower it or raise the limits in the job file"
        )
    if family.is_video:
        if not 1 <= request.num_frames <= limits.max_frames:
            raise RowError(f"num_frames {request.num_frames} must be between 1 and limits.max_frames {limits.max_frames}")
        if request.fps <= 0:
            raise RowError(f"fps must be > 0, got {request.fps}")
    if not 0 <= request.seed < SEED_LIMIT:
        raise RowError(f"seed must be between 0 and 2**63-1, got {request.seed}")
    reason = family.check_request(request)
    if reason:
        raise RowError(reason)


def to_requests(row: dict[str, Any], rules: RowRules) -> list[Request]:
    """One raw row -> its requests (one per sample); raises RowError with an actionable message.

    With N samples per prompt, sample k has id `<id>-s<k>` and a seed derived from the row's seed
    (or the job seed) and that id, so every sample differs and each is reproducible alone.
    """
    prompt = row.get(rules.prompt_column)
    if prompt is None:
        raise RowError(f"prompt column {rules.prompt_column!r} is null; give every row a prompt")
    if not isinstance(prompt, str):
        raise RowError(
            f"prompt column {rules.prompt_column!r} must be text, got {prompt!r} ({type(prompt).__name__})"
        )
    if not prompt.strip():
        raise RowError(f"prompt column {rules.prompt_column!r} is empty; give every row a prompt")
    if len(prompt) > rules.limits.max_prompt_chars:
        raise RowError(f"prompt has {len(prompt)} characters, above limits.max_prompt_chars {rules.limits.max_prompt_chars}")

    overrides = {}
    extra_types = rules.family.extra_types()
    for column, kind in {**schema.OVERRIDE_COLUMNS, **extra_types}.items():
        if column != rules.prompt_column and row.get(column) is not None:
            overrides[column] = _coerce(column, row[column], kind)

    raw_id = row.get(rules.id_column)
    if raw_id is None:
        row_id = derived_id(prompt, overrides)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, np.integer)):
        raise RowError(f"id column {rules.id_column!r} must be text or an integer, got {type(raw_id).__name__}")
    else:
        row_id = str(raw_id)
        if not row_id.strip():
            raise RowError(f"id column {rules.id_column!r} is empty; leave it null to derive one")

    values = {**rules.defaults, **overrides}
    if not rules.family.is_video:
        values[schema.NUM_FRAMES], values[schema.FPS] = 1, 0.0
    base_seed = overrides.get(schema.SEED)
    requests = []
    for sample in range(rules.samples_per_prompt):
        if rules.samples_per_prompt == 1:
            sample_id = row_id
            seed = base_seed if base_seed is not None else derived_seed(rules.job_seed, row_id)
        else:
            sample_id = f"{row_id}-s{sample}"
            seed = derived_seed(base_seed if base_seed is not None else rules.job_seed, sample_id)
        request = request_from({**values, schema.ID: sample_id, schema.PROMPT: prompt, schema.SEED: seed},
                               tuple(extra_types))
        _check_limits(request, rules.limits, rules.family)
        requests.append(request)
    return requests


def _fallback_id(row: dict[str, Any], rules: RowRules) -> str:
    raw = row.get(rules.id_column)
    if raw is not None and str(raw).strip():
        return str(raw)
    return "p" + hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:20]


def validate_batch(table, rules: RowRules, ledger=None, done=None) -> dict[str, np.ndarray]:
    """A pyarrow batch of raw rows -> request columns; invalid rows carry their error. With N samples
    per prompt, one row per prompt that lists its samples (rows.fold_samples).

    `ledger` (a ShardedLedger) turns a second use of an id into an error row; `done` (an IdSet of the ids
    a previous run completed, or its object reference) marks those requests ALREADY_DONE so no stage
    touches them again.
    """
    results: list[tuple[str, int, str, Request | None, str]] = []  # id, sample, input row, request, error
    unreadable: set[int] = set()  # positions in `results` of rows the read could not read
    starts: list[int] = []  # where each input row's samples begin in `results`
    kept: list[dict[str, Any]] = []  # each input row's values of the columns the manifest keeps
    for row in table.to_pylist():
        starts.append(len(results))
        kept.append({name: row.get(name) for name in rules.keep_columns})
        read_error, position = row.pop(READ_ERROR, None), row.pop(READ_POSITION, None)
        if read_error:  # the row's id and prompt are unknown: it is named by its file and row number
            unreadable.add(len(results))
            results.append((position, 0, json.dumps({"unreadable": position}, ensure_ascii=False), None, read_error))
            continue
        input_row = json.dumps(row, ensure_ascii=False, default=str)
        try:
            requests = to_requests(row, rules)
        except RowError as exc:
            results.append((_fallback_id(row, rules), 0, input_row, None, str(exc)))
            continue
        results.extend((r.id, k, input_row, r, "") for k, r in enumerate(requests))

    duplicate_positions: set[int] = set()
    if ledger is not None:
        claimable = [i for i, r in enumerate(results) if r[3] is not None]
        claimed = ledger.claim([results[i][0] for i in claimable])
        duplicate_positions = {i for i, first in zip(claimable, claimed) if not first}
    done = shared_id_set(done)
    finished = done.contains([r[0] for r in results]) if done is not None else np.zeros(len(results), dtype=bool)

    out = empty_request_columns(len(results), rules.family.extra_types())
    for index, (row_id, sample, input_row, request, error) in enumerate(results):
        out[schema.ID][index] = row_id
        out[schema.SAMPLE_INDEX][index] = sample
        out[schema.INPUT_ROW][index] = input_row
        if index in duplicate_positions:
            request, error = None, (
                f"id {row_id!r} appears more than once in the input (another row with it was kept); "
                "give every row a unique id, or drop the id column to derive ids from the content"
            )
        if request is None:
            prompt = json.loads(input_row).get(rules.prompt_column)
            out[schema.PROMPT][index] = prompt if isinstance(prompt, str) else ""
            out[schema.NEGATIVE_PROMPT][index] = ""
            out[schema.ERROR_STAGE][index] = schema.STAGE_VALIDATE
            out[schema.ERROR_TYPE][index] = "UnreadableRow" if index in unreadable else "InvalidRow"
            out[schema.ERROR_MESSAGE][index] = error
            continue
        write_request(out, index, request)
        if finished[index]:
            out[schema.ERROR_STAGE][index] = schema.ALREADY_DONE
    groups = [range(start, end) for start, end in zip(starts, [*starts[1:], len(results)])]
    for name in rules.keep_columns:
        out[name] = np.empty(len(results), dtype=object)
        for values, group in zip(kept, groups):
            for index in group:
                out[name][index] = values[name]
    if rules.samples_per_prompt > 1:  # each prompt is encoded once, then expanded (rows.unfold_samples)
        return fold_samples(out, [list(group) for group in groups])
    return out
