"""Interpolation jobs: smooth transitions between keyframes, made in latent space on the cluster.

A keyframe table gives transitions: two prompts, two seeds, a frame count (or a `walk` of keyframes per
`sequence`, one transition between each consecutive pair). Frame k of a transition is generated from
the two prompts' conditioning blended at t_k and the two seeds' noise spherically interpolated at t_k:
the encode pool encodes each endpoint once and expands the frames (actors/blend.py), the denoise and
decode pools work on the frames in parallel like any rows, and when all frames of a transition are in
storage a Ray task assembles them, in order, into one MP4 (`videos/<id>.mp4`). Frames are kept as
images (`media/<id>-f<k>.png`) with a manifest row each; every transition ends as an MP4 with a row in
`transitions/`, or as one error row (in `errors/`) that names its failed frame. A re-run resumes: finished transitions are skipped, finished frames are not redone.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from latentmill import __version__, schema
from latentmill.config import JobConfig

log = logging.getLogger(__name__)

EASINGS = {
    "linear": lambda t: t,
    "ease-in-out": lambda t: 0.5 - 0.5 * math.cos(math.pi * t),
}
TRANSITIONS = "transitions"  # the transitions' manifest (Parquet parts)
VIDEOS = "videos"  # one MP4 per transition
TRANSITION_COLUMNS = ("id", "prompt_a", "prompt_b", "seed_a", "seed_b", "frames", "fps", "easing",
                      "output_uri", "bytes", "sha256", "mime_type", "frame_ids", "model", "model_hash",
                      "latentmill_version", "job_fingerprint")


class KeyframeError(ValueError):
    """A keyframe table that cannot run; the message names the row or column and the fix."""


@dataclass(frozen=True)
class Transition:
    id: str
    prompt_a: str
    prompt_b: str
    seed_a: int
    seed_b: int
    frames: int
    fps: float
    easing: str
    negative_prompt: str = ""

    def positions(self) -> list[float]:
        ease = EASINGS[self.easing]
        return [ease(k / (self.frames - 1)) for k in range(self.frames)]


@dataclass
class InterpolationSummary:
    run_id: str
    output_uri: str
    transitions_read: int = 0
    transitions_written: int = 0
    already_done: int = 0
    transitions_failed: int = 0
    frames_written: int = 0
    wall_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # transition id -> reason

    @property
    def balanced(self) -> bool:
        return self.transitions_read == self.transitions_written + self.already_done + self.transitions_failed

    def table(self) -> str:
        rows = [("transitions read", self.transitions_read), ("transitions written", self.transitions_written),
                ("already done", self.already_done), ("transitions failed", self.transitions_failed),
                ("frames written", self.frames_written), ("wall time", f"{self.wall_seconds:.1f} s"),
                ("output", self.output_uri)]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ---- the keyframe table ---------------------------------------------------------------------------


def read_keyframes(uri: str, options: dict[str, Any], config: JobConfig) -> list[Transition]:
    """Every transition of the table, checked on the driver (keyframe tables are small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentmill.io.storage import StorageError, resolve
    from latentmill.pipelines.inputs import _list_files

    try:
        fs, path = resolve(uri, options)
        files = _list_files(fs, path)
        tables = []
        for file in files:
            with fs.open(file, "rb") as handle:
                tables.append(pq.read_table(handle))
        rows = pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []
    except (StorageError, OSError, pa.ArrowException) as exc:
        raise KeyframeError(f"cannot read the keyframe table {uri!r}: {exc}") from None
    if not files:
        raise KeyframeError(f"no keyframe table at {uri!r}: no such file, or a folder/glob with no files in it")
    if not rows:
        raise KeyframeError(f"the keyframe table {uri} has no rows")
    settings = config.interpolate
    if "prompt_a" in rows[0]:
        transitions = [_transition(i, row, settings, config.defaults.seed) for i, row in enumerate(rows)]
    else:
        transitions = _walks(rows, settings, config.defaults.seed)
    seen: set[str] = set()
    for transition in transitions:
        if transition.id in seen:
            raise KeyframeError(f"transition id {transition.id!r} appears more than once; give every row a unique id")
        seen.add(transition.id)
    return transitions


def _field(row: dict[str, Any], name: str, kind: type, where: str, default: Any = None) -> Any:
    value = row.get(name)
    if value is None:
        if default is None:
            raise KeyframeError(f"{where}: column {name!r} is empty; give every keyframe row one")
        return default
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise KeyframeError(f"{where}: column {name!r} must be non-empty text, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeyframeError(f"{where}: column {name!r} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise KeyframeError(f"{where}: column {name!r} must be a whole number, got {value!r}")
    return kind(value)


def _seed(row, name, where, job_seed, key) -> int:
    from latentmill.pipelines.validate import derived_seed

    seed = _field(row, name, int, where, default=-1)
    if seed == -1:
        return derived_seed(job_seed, key)
    if seed < 0:
        raise KeyframeError(f"{where}: column {name!r} must be >= 0, got {seed}")
    return seed


def _common(row, settings, where) -> tuple[int, float, str]:
    frames = _field(row, "frames", int, where, settings.frames)
    fps = _field(row, "fps", float, where, settings.fps)
    easing = _field(row, "easing", str, where, settings.easing)
    if frames < 2:
        raise KeyframeError(f"{where}: frames must be at least 2 (the two keyframes), got {frames}")
    if fps <= 0:
        raise KeyframeError(f"{where}: fps must be > 0, got {fps}")
    if easing not in EASINGS:
        raise KeyframeError(f"{where}: easing {easing!r} is not one of {', '.join(EASINGS)}")
    return frames, fps, easing


def _transition(index: int, row: dict[str, Any], settings, job_seed: int) -> Transition:
    where = f"keyframe row {index}"
    prompt_a, prompt_b = _field(row, "prompt_a", str, where), _field(row, "prompt_b", str, where)
    frames, fps, easing = _common(row, settings, where)
    identity = row.get("id")
    if identity is None:
        content = json.dumps([prompt_a, prompt_b, row.get("seed_a"), row.get("seed_b"), frames, easing])
        identity = "t" + hashlib.sha256(content.encode()).hexdigest()[:20]
    identity = str(identity)
    return Transition(identity, prompt_a, prompt_b, _seed(row, "seed_a", where, job_seed, f"{identity}:a"),
                      _seed(row, "seed_b", where, job_seed, f"{identity}:b"), frames, fps, easing,
                      row.get("negative_prompt") or "")


def _walks(rows: list[dict[str, Any]], settings, job_seed: int) -> list[Transition]:
    """Keyframes grouped by `sequence`, in table order: one transition between each consecutive pair."""
    if "sequence" not in rows[0] or "prompt" not in rows[0]:
        raise KeyframeError("a keyframe table needs either prompt_a and prompt_b columns (one transition per row) "
                            "or sequence and prompt columns (a walk through keyframes per sequence)")
    sequences: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, row in enumerate(rows):
        sequences.setdefault(str(row["sequence"]), []).append((index, row))
    transitions = []
    for name, keyframes in sequences.items():
        if len(keyframes) < 2:
            raise KeyframeError(f"sequence {name!r} has one keyframe (row {keyframes[0][0]}); a walk needs two or more")
        for step, ((index, a), (_, b)) in enumerate(zip(keyframes, keyframes[1:])):
            where = f"keyframe row {index}"
            identity = f"{name}-{step:03d}"
            frames, fps, easing = _common(a, settings, where)
            transitions.append(Transition(
                identity, _field(a, "prompt", str, where), _field(b, "prompt", str, f"keyframe row {index + 1}"),
                _seed(a, "seed", where, job_seed, f"{name}:{step}"), _seed(b, "seed", where, job_seed, f"{name}:{step + 1}"),
                frames, fps, easing, a.get("negative_prompt") or ""))
    return transitions


# ---- the job --------------------------------------------------------------------------------------


def run_interpolation(config: JobConfig) -> InterpolationSummary:
    """Run an interpolation job to the end; raises JobError when it cannot start or must stop."""
    from latentmill.actors import blend
    from latentmill.io.probes import check_writable
    from latentmill.io.storage import StorageError, resolve
    from latentmill.models import ModelError, resolve_model
    from latentmill.pipelines.job import JobError, ResultWriter, RunSummary, job_fingerprint
    from latentmill.io.outputs import load_output_state
    from latentmill.pipelines.resume import OutputConflict, check_job_record
    from latentmill.pipelines.validate import DefaultsError, resolve_defaults
    from latentmill.rows import request_from

    started = time.perf_counter()
    if config.output.layout != "files":
        raise JobError(f"an interpolation job writes the files layout only; output.layout is {config.output.layout!r}")
    options = config.storage.fsspec_options()
    try:
        check_writable(config.output.uri, options)
        model = resolve_model(config.model.path, options, config.model.allow_pickle)
        family = model.family()
        if family.is_video or not family.interpolates:
            raise KeyframeError(f"the model {config.model.path} ({family.name}) cannot interpolate: transitions are made "
                                "with image models whose initial noise latentmill can blend (README, 'Latent workflows')")
        defaults = resolve_defaults(config.defaults, family.generation_defaults(), family.extra_parameters)
        defaults[schema.NUM_FRAMES], defaults[schema.FPS] = 1, 0.0
        transitions = read_keyframes(config.input.uri, options, config)
    except (StorageError, ModelError, DefaultsError, KeyframeError) as exc:
        raise JobError(str(exc)) from None
    extra_names = tuple(family.extra_parameters)
    endpoints = {}
    for transition in transitions:
        request = request_from({**defaults, schema.ID: transition.id, schema.PROMPT: transition.prompt_a,
                                schema.NEGATIVE_PROMPT: transition.negative_prompt or defaults[schema.NEGATIVE_PROMPT],
                                schema.SEED: transition.seed_a}, extra_names)
        reason = family.check_request(request)
        if reason:
            raise JobError(f"transition {transition.id}: {reason}")
        endpoints[transition.id] = request

    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    fingerprint = job_fingerprint(config, model.content_hash)
    fs, root = resolve(config.output.uri, options)
    try:
        check_job_record(fs, root, fingerprint, {"output": config.output.uri, "model": config.model.path,
                                                 "input": config.input.uri})
        frames_done = load_output_state(fs, root, config.output.verify_existing)
    except OutputConflict as exc:
        raise JobError(str(exc)) from None
    finished = _finished_transitions(fs, root)
    summary = InterpolationSummary(run_id=run_id, output_uri=config.output.uri, transitions_read=len(transitions))
    static = {"model": config.model.path, "model_hash": model.content_hash, "model_family": family.name,
              "scheduler": family.scheduler_name(), "denoise_options": config.stages.denoise_options.describe(),
              "latentmill_version": __version__, "job_fingerprint": fingerprint}
    frames_writer = ResultWriter(config.output.uri, options, run_id, config.output.manifest_rows_per_part,
                                 config.output.manifest_flush_seconds, static, extra_names,
                                 more_columns=tuple(blend.FRAME_COLUMNS))
    frame_summary = RunSummary(run_id=run_id, output_uri=config.output.uri)
    todo = [t for t in transitions if t.id not in finished]
    summary.already_done = len(transitions) - len(todo)
    records = []
    if todo:
        records = _stream(config, todo, endpoints, frames_done.done, model, family, options, frames_writer,
                          frame_summary, summary, fingerprint)
    try:
        frames_writer.close()
        _write_transitions(fs, root, run_id, records)
    except StorageError as exc:
        raise JobError(f"storage failed, job stopped: {exc}") from None
    summary.frames_written = frame_summary.outputs_written
    summary.wall_seconds = time.perf_counter() - started
    if not summary.balanced:
        raise JobError(f"transition accounting failed: {summary}; please report this as a bug")
    payload = asdict(summary)
    frames_writer.write_json(f"runs/{run_id}.json", payload)
    frames_writer.write_json("summary.json", payload)
    return summary


def _stream(config, todo, endpoints, frames_done, model, family, options, frames_writer, frame_summary, summary,
            fingerprint) -> list[dict[str, Any]]:
    import ray
    import ray.data

    from latentmill.actors import blend
    from latentmill.actors.stages import stage_workers
    from latentmill.io.hidden import HiddenOptions
    from latentmill.pipelines.job import JobError, init_ray
    from latentmill.pipelines.plan import pool_args, worker_kwargs

    init_ray(config)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.ray.progress_bars
    context.raise_original_map_exception = True
    rows = []
    for transition in todo:
        request = endpoints[transition.id]
        row = request.columns()
        row.update({blend.PROMPT_B: transition.prompt_b, blend.SEED_B: transition.seed_b,
                    blend.POSITIONS: json.dumps(transition.positions()),
                    blend.DONE_STEPS: json.dumps([k for k in range(transition.frames)
                                                  if blend.frame_id(transition.id, k) in frames_done]),
                    schema.ERROR_STAGE: ""})
        rows.append(row)
    ds = ray.data.from_items(rows).repartition(target_num_rows_per_block=1)
    pools = dict(config.stages.items())
    encode_kwargs = worker_kwargs(pools[schema.STAGE_ENCODE], model) | {"metrics_job": config.metrics.job_name}
    ds = ds.map_batches(blend.BlendEncodeWorker, fn_constructor_kwargs=encode_kwargs,
                        **(pool_args(pools[schema.STAGE_ENCODE]) | {"batch_size": 1}))
    ds = ds.repartition(target_num_rows_per_block=pools[schema.STAGE_DENOISE].batch_size)
    workers = stage_workers()
    for stage in (schema.STAGE_DENOISE, schema.STAGE_DECODE):
        kwargs = worker_kwargs(pools[stage], model) | {"metrics_job": config.metrics.job_name}
        if stage == schema.STAGE_DENOISE:
            kwargs["options"] = config.stages.denoise_options
        if stage == schema.STAGE_DECODE:
            kwargs.update(output_uri=config.output.uri, storage_options=HiddenOptions(options),
                          image_format=config.output.image_format, video_format=config.output.video_format)
        ds = ds.map_batches(workers[stage], fn_constructor_kwargs=kwargs, **pool_args(pools[stage]))

    by_id = {t.id: t for t in todo}
    seen = {t.id: 0 for t in todo}  # every transition yields exactly `frames` result rows
    failed: dict[str, str] = {}
    assembling = {}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            frames_writer.add(batch, frame_summary)
            completed = set()
            for index in range(len(batch[schema.ID])):
                transition_id = str(batch[blend.TRANSITION][index])
                stage = batch[schema.ERROR_STAGE][index]
                if stage and stage != schema.ALREADY_DONE and transition_id not in failed:
                    failed[transition_id] = (f"frame {int(batch[blend.STEP][index])} of {by_id[transition_id].frames} "
                                             f"failed in {stage}: {batch[schema.ERROR_MESSAGE][index]}")
                seen[transition_id] += 1
                if seen[transition_id] == by_id[transition_id].frames:
                    completed.add(transition_id)
            if completed:
                frames_writer.close()  # the frames' manifest rows before their transition's
            for transition_id in sorted(completed):
                transition = by_id[transition_id]
                if transition_id in failed:
                    _fail(summary, frames_writer, transition, failed[transition_id])
                else:
                    frame_uris = [_frame_uri(config, transition.id, k) for k in range(transition.frames)]
                    assembling[transition_id] = _assemble.remote(frame_uris, transition.fps, config.output.uri,
                                                                 HiddenOptions(options), transition.id)
    except Exception as exc:  # noqa: BLE001 - report Ray's cause, not its traceback
        frames_writer.close()
        last = (str(exc).strip().splitlines() or [""])[-1]
        raise JobError(f"interpolation stopped: {type(exc).__name__}: {last}; re-run the same command to resume") from None
    records = []
    for transition_id, reference in assembling.items():
        transition = by_id[transition_id]
        try:
            uri, size, digest = ray.get(reference)
        except Exception as exc:  # noqa: BLE001 - one transition fails, not the job
            _fail(summary, frames_writer, transition, f"assembling the video failed: {exc}")
            continue
        summary.transitions_written += 1
        records.append({"id": transition.id, "prompt_a": transition.prompt_a, "prompt_b": transition.prompt_b,
                        "seed_a": transition.seed_a, "seed_b": transition.seed_b, "frames": transition.frames,
                        "fps": transition.fps, "easing": transition.easing, "output_uri": uri, "bytes": size,
                        "sha256": digest, "mime_type": "video/mp4",
                        "frame_ids": [blend.frame_id(transition.id, k) for k in range(transition.frames)],
                        "model": config.model.path, "model_hash": model.content_hash,
                        "latentmill_version": __version__, "job_fingerprint": fingerprint})
    return records


def _fail(summary: InterpolationSummary, writer, transition: Transition, reason: str) -> None:
    """The transition's one error row (in errors/, with its id and what failed)."""
    summary.transitions_failed += 1
    summary.failures[transition.id] = reason
    writer.pending["errors"].append({
        schema.ID: transition.id, schema.SAMPLE_INDEX: 0, schema.INPUT_ROW: json.dumps(asdict(transition)),
        schema.ERROR_STAGE: TRANSITIONS, schema.ERROR_TYPE: "TransitionFailed", schema.ERROR_MESSAGE: reason,
        "run_id": writer.run_id,
    })


def _frame_uri(config: JobConfig, transition_id: str, step: int) -> str:
    """Where the decode pool wrote a frame (its media key, as for any row)."""
    from latentmill.actors.blend import frame_id
    from latentmill.actors.stages import media_key
    from latentmill.io import media, storage

    extension, _ = media.format_info(config.output.image_format)
    return storage.join(config.output.uri, "media", media_key(frame_id(transition_id, step), extension))


def _assemble_frames(frame_uris: list[str], fps: float, output_uri: str, options, transition_id: str):
    """Read a transition's frames from storage, in order, and write them as one MP4."""
    import numpy as np

    from latentmill.io import media, storage

    revealed = options.reveal()
    frames = np.stack([media.decode_image(storage.read_bytes(*storage.resolve(uri, revealed))) for uri in frame_uris])
    data = media.encode_video(frames, fps, "mp4")
    fs, root = storage.resolve(output_uri, revealed)
    key = f"{storage.safe_key(transition_id)}.mp4"
    storage.put_bytes(fs, storage.join(root, VIDEOS, key), data)
    return storage.join(output_uri, VIDEOS, key), len(data), hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def _remote_assemble():
    import ray

    return ray.remote(num_cpus=0.25, max_retries=2)(_assemble_frames)


class _LazyRemote:
    """`_assemble.remote(...)` without importing Ray when this module is imported."""

    def remote(self, *args):
        return _remote_assemble().remote(*args)


_assemble = _LazyRemote()


def _finished_transitions(fs, root: str) -> set[str]:
    """Transitions whose video a previous run wrote and recorded (and that is still there, intact)."""
    from latentmill.io.storage import join, read_bytes, resolve
    from latentmill.io.outputs import list_parts, read_table

    finished = set()
    for part in list_parts(fs, join(root, TRANSITIONS)):
        for row in read_table(fs, part).select(["id", "output_uri", "sha256"]).to_pylist():
            try:
                data = read_bytes(*resolve(row["output_uri"], fs.storage_options))
            except FileNotFoundError:
                continue
            if hashlib.sha256(data).hexdigest() == row["sha256"]:
                finished.add(row["id"])
    return finished


def _write_transitions(fs, root: str, run_id: str, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentmill.io.storage import join, put_bytes

    if not records:
        return
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records).select(list(TRANSITION_COLUMNS)), buffer)
    put_bytes(fs, join(root, TRANSITIONS, f"part-{run_id}.parquet"), buffer.getvalue())
