"""The three stage workers that Ray Data runs as actor pools.

Each loads its own model components once, in __init__, onto the GPU Ray gave it (else the CPU), and
then maps batches. A row that already failed passes through untouched; an exception while processing
a batch is retried row by row, so one bad row becomes one error row and its batch mates complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from latentmill import schema
from latentmill.actors.decode_memory import FULL, SLICED, TILED
from latentmill.config import DecodePeakMemory, DenoiseOptions
from latentmill.faults import FaultInjector
from latentmill.io.hidden import HiddenOptions
from latentmill.metrics import DEFAULT_JOB, StageMetrics
from latentmill.models import ModelError, ModelRef, tensors
from latentmill.models.base import AudioTrack
from latentmill.rows import Request, request_at, unfold_samples

log = logging.getLogger(__name__)


@contextlib.contextmanager
def full_collections_paused_then_frozen():
    """Load a stage's libraries and weights without Python's full garbage collections, then freeze what
    stays loaded.

    torch, diffusers and transformers leave ~400,000 long-lived objects behind, and every full collection
    rescans all of them: while they import (full collections that free a few hundred objects), in every
    later one, and in those Python runs at exit. Measured per tiny-model actor (benchmarks/actor_start.py):
    loading 3.5 -> 3.1 CPU-s, exiting 0.8 -> 0.15. The young generations are still collected while
    loading, so cycles that die young (a caught exception's frames holding a tensor) go as before. One
    collection after the load frees the rest of its garbage; freezing what survives takes it out of all
    later ones.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 1_000_000)
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*thresholds)


class StageWorker:
    """Common life cycle of a stage actor: set up torch, load once, map batches with row isolation."""

    stage: str

    def __init__(self, model: ModelRef, num_gpus: float, dtype: str, torch_threads: int,
                 metrics_job: str = DEFAULT_JOB) -> None:
        started = time.perf_counter()
        self.faults = FaultInjector(self.stage)
        # Counters exist (at 0) from here, while the model loads, so a scrape sees the whole rise.
        self.metrics = StageMetrics(self.stage, model.path, metrics_job)
        try:
            with full_collections_paused_then_frozen():
                self.family = model.family()
                self.device, self.dtype = self.family.prepare_runtime(num_gpus, dtype, torch_threads)
                self.load()
        except Exception as exc:
            # The driver turns this (the last line of Ray's actor-death traceback) into the job's message.
            detail = " ".join(str(exc).split())[:1000]
            raise ModelError(f"the {self.stage} stage could not load the model {model.path}: "
                             f"{type(exc).__name__}: {detail}") from exc
        self.load_seconds = time.perf_counter() - started
        log.info("%s worker loaded %s on %s in %.1fs", self.stage, model.path, self.device, self.load_seconds)
        self.metrics.model_loaded(self.load_seconds)

    def load(self) -> None:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        healthy = [i for i, stage in enumerate(batch[schema.ERROR_STAGE]) if not stage]
        with self.metrics.batch() as record:  # latency, rows by outcome, bytes, batches in flight
            out = self.prepare_output(batch)
            for group in self.group(batch, healthy):
                self._run_isolated(batch, out, group)
            out = self.finish(out)
            record.outcome(out, healthy)
        return out

    def finish(self, out: dict[str, Any]) -> dict[str, np.ndarray]:
        return out

    def group(self, batch: dict[str, np.ndarray], rows: list[int]) -> list[list[int]]:
        """Rows that may share one model call."""
        return [rows] if rows else []

    def prepare_output(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def process(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray], rows: list[int]) -> None:
        """Run the stage for `rows` and fill `out` in place."""
        raise NotImplementedError

    def _run_isolated(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray], rows: list[int]) -> None:
        started = time.perf_counter()
        try:
            self.faults.before_call([str(batch[schema.ID][row]) for row in rows])
            self.process(batch, out, rows)
        except Exception as exc:  # noqa: BLE001 - isolate the failing row(s), then record them
            if getattr(exc, "fatal", False):
                raise  # e.g. storage access denied: no row can succeed, stop the job
            if len(rows) == 1:
                mark_error(out, rows[0], self.stage, exc)
                return
            log.warning("%s batch of %d failed (%s); retrying row by row", self.stage, len(rows), exc)
            for row in rows:
                self._run_isolated(batch, out, [row])
            return
        per_row = (time.perf_counter() - started) / len(rows)
        out[schema.seconds_column(self.stage)][rows] += per_row  # (a second denoise pool adds to the first's)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError))


class BlankImage(ValueError):
    """Decoded frames of one flat colour (the quality gate's reject_blank)."""


class LowClipScore(ValueError):
    """Decoded frames that match their prompt too little (the quality gate's clip_score)."""


@dataclass(frozen=True)
class ClipGateSettings:
    """What a decode actor needs for quality.clip_score: the CLIP model, and the score below which a
    sample is rejected (None: only recorded)."""

    model: str
    storage_options: HiddenOptions
    min: float | None = None


def is_blank(frames: np.ndarray) -> bool:
    """uint8 frames whose pixels all lie within 2 levels of each other."""
    return int(frames.max()) - int(frames.min()) <= 2


def is_retry(batch: dict[str, np.ndarray], row: int) -> bool:
    """Whether the row is the quality gate's second or later attempt (injected faults hit first attempts)."""
    return schema.ATTEMPT in batch and int(batch[schema.ATTEMPT][row]) > 0


def mark_error(out: dict[str, np.ndarray], row: int, stage: str, exc: BaseException) -> None:
    out[schema.ERROR_STAGE][row] = stage
    out[schema.ERROR_TYPE][row] = type(exc).__name__
    out[schema.ERROR_MESSAGE][row] = str(exc)[:2000] or type(exc).__name__


def _copy_without(batch: dict[str, np.ndarray], drop: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {name: np.array(values, copy=True) for name, values in batch.items() if name not in drop}
    return out


def keep_conditioning(out: dict[str, np.ndarray], columns: tuple[str, ...], keep: Callable[[int], bool]) -> None:
    """Leave the conditioning columns filled only on the rows `keep` selects (the rest get b"") and mark those
    rows in `conditioning_kept`: a quality gate's rejected rows carry them to their next attempt."""
    size = len(out[schema.ID])
    kept = np.zeros(size, dtype=bool)
    for row in range(size):
        kept[row] = keep(row)
    for name in columns:
        values = np.array(out[name], dtype=object, copy=True)
        values[~kept] = b""
        out[name] = values
    out[schema.CONDITIONING_KEPT] = kept


def _requests(family, batch: dict[str, np.ndarray], rows: list[int]) -> list[Request]:
    extra_names = tuple(family.extra_parameters)
    return [request_at(batch, i, extra_names) for i in rows]


def _latents_column(values: list[np.ndarray | None]) -> np.ndarray:
    """Per-row latents; a row without any (it failed) gets a tiny placeholder of the same rank, never decoded."""
    ndim = max((value.ndim for value in values if value is not None), default=3)
    placeholder = np.zeros((1,) * ndim, dtype=np.float32)
    return _per_row_array([value if value is not None else placeholder for value in values])


def media_key(row_id: str, extension: str) -> str:
    """A row's object name under media/: its id made safe for object keys, and the format's extension."""
    from latentmill.io import storage

    return f"{storage.safe_key(row_id)}.{extension}"


def _per_row_array(values: list[np.ndarray]) -> np.ndarray:
    """Stack equal shapes; otherwise an object array Ray stores as a variable-shaped tensor column."""
    if len({v.shape for v in values}) == 1:
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


@dataclass(frozen=True)
class EmbeddingCacheSettings:
    """What an encode actor needs to use cache.embeddings."""

    uri: str
    storage_options: HiddenOptions
    encoder_hash: str


class TextEncodeWorker(StageWorker):
    """Pool A: tokenizer(s) + text encoder(s). Requests -> the model's named conditioning tensors.

    Each tensor the model declares is a binary column of per-row packed arrays (tensors.pack): any
    count, shape and dtype, and empty where a row has none (failed rows; negatives a row's guidance
    does not use). Values stay in the encoder's dtype unless `float32` is asked for. Rows of a batch
    that differ only in id and seed share one encoding (`encoded` marks the row that ran it), and a
    prompt row with N samples leaves as N rows (rows.unfold_samples).
    """

    stage = schema.STAGE_ENCODE

    def __init__(self, *args, conditioning_float32: bool = False,
                 embedding_cache: EmbeddingCacheSettings | None = None, **kwargs) -> None:
        self.conditioning_float32 = conditioning_float32
        self.cache_settings = embedding_cache
        self.encoder_loaded = False
        super().__init__(*args, **kwargs)

    def load(self) -> None:
        self.columns = self.family.conditioning_columns()
        self.cache = None
        if self.cache_settings is None:
            self._load_encoder()
        else:  # the encoder loads at the first row the cache does not have
            from latentmill.io.embeddings import EmbeddingCache

            self.cache = EmbeddingCache(self.cache_settings.uri, self.cache_settings.storage_options.reveal())

    def _load_encoder(self) -> None:
        if not self.encoder_loaded:
            self.family.load_encoder(self.device, self.dtype)
            self.encoder_loaded = True

    def __call__(self, batch):
        return unfold_samples(super().__call__(batch))

    def prepare_output(self, batch):
        out = _copy_without(batch, ())
        size = len(batch[schema.ID])
        for name in self.columns:
            out[name] = np.full(size, b"", dtype=object)
        out[schema.seconds_column(self.stage)] = np.zeros(size)
        out[schema.EMBEDDINGS_CACHED] = np.zeros(size, dtype=bool)
        out[schema.ENCODED] = np.zeros(size, dtype=bool)
        return out

    def process(self, batch, out, rows):
        distinct: dict[Request, int] = {}  # what the encoder sees (id and seed aside) -> its position
        shared = []  # each row's position in `distinct`
        for request in _requests(self.family, batch, rows):
            shared.append(distinct.setdefault(dataclasses.replace(request, id="", seed=0), len(distinct)))
        packed, truncated, cached = self._encode(list(distinct))
        for name in self.columns:
            for row, position in zip(rows, shared):
                out[name][row] = packed[name][position]
        out[schema.PROMPT_TRUNCATED][rows] = [truncated[position] for position in shared]
        out[schema.EMBEDDINGS_CACHED][rows] = [cached[position] for position in shared]
        ran_here: dict[int, int] = {}  # position in `distinct` -> the first row that shares it
        for row, position in zip(rows, shared):
            ran_here.setdefault(position, row)
        out[schema.ENCODED][[row for position, row in ran_here.items() if not cached[position]]] = True

    def _encode(self, requests: list[Request]) -> tuple[dict[str, list[bytes]], list[bool], list[bool]]:
        """Each row's packed conditioning columns and truncation flag, from the cache where it has them;
        and which rows it had."""
        from latentmill.io.embeddings import entry_key

        size = len(requests)
        packed: dict[str, list[bytes]] = {name: [b""] * size for name in self.columns}
        truncated, cached = [False] * size, [False] * size
        keys: list[str] = []
        if self.cache is not None:
            dtype = str(self.dtype).removeprefix("torch.")
            keys = [entry_key(self.cache_settings.encoder_hash, self.family.name, dtype, self.conditioning_float32,
                              self.family.encoding_key(request)) for request in requests]
            for i, key in enumerate(keys):
                entry = self.cache.get(key)
                if entry is not None and set(entry[0]) == set(self.columns):
                    for name in self.columns:
                        packed[name][i] = entry[0][name]
                    truncated[i], cached[i] = entry[1], True
        misses = [i for i in range(size) if not cached[i]]
        if misses:
            self._load_encoder()
            self.faults.model_call()
            encoded = self.family.encode([requests[i] for i in misses])
            for name, values in encoded.tensors.items():
                for i, value in zip(misses, values):
                    if value is not None and self.conditioning_float32:
                        value = tensors.as_float32(value)
                    packed[name][i] = tensors.pack(value)
            for i, flag in zip(misses, encoded.truncated):
                truncated[i] = bool(flag)
            if self.cache is not None:
                for i in misses:
                    self.cache.put(keys[i], {name: packed[name][i] for name in self.columns}, truncated[i])
        return packed, truncated, cached


class DenoiseWorker(StageWorker):
    """Pool B: denoiser + scheduler. Conditioning + per-row seed -> final latents.

    Takes each conditioning column the model declares, and drops it from the rows it passes on, unless
    `forward_conditioning` says otherwise (a quality gate without an embedding cache; see
    pipelines.plan.conditioning_forwarding): "rejected" keeps it on the rows this stage rejects for
    non-finite latents, "all" on every row that leaves healthy too (the decode stage's gates decide). With
    `expert` set, the model's denoising is split over two pools (stages.denoise_2): expert 0's pool runs
    the first steps and passes the conditioning on with each row's handover (latents and scheduler
    state); expert 1's pool runs the rest from there and adds its time to the row's denoise seconds.
    """

    stage = schema.STAGE_DENOISE
    forward_conditioning: str | None = None

    def __init__(self, *args, options: DenoiseOptions | None = None, expert: int | None = None,
                 forward_conditioning: str | None = None, **kwargs) -> None:
        self.options = options or DenoiseOptions()
        self.expert = expert
        # (the first expert's pool passes every row's conditioning on to the second's anyway)
        self.forward_conditioning = forward_conditioning if expert != 0 else None
        super().__init__(*args, **kwargs)

    def load(self) -> None:
        if self.expert is None:
            self.family.load_denoiser(self.device, self.dtype)
        else:
            self.family.load_denoiser_expert(self.device, self.dtype, self.expert)
        self.family.speed_up_denoiser(self.options.compile, self.options.attention_backend)
        self.columns = self.family.conditioning_columns()

    @property
    def latent_columns(self) -> tuple[str, ...]:
        """What this stage hands on per row: `latents`, and a family's further ones (e.g. its sound's)."""
        return (schema.LATENTS, *self.family.extra_latent_columns)

    def group(self, batch, rows):
        groups: dict[tuple, list[int]] = {}
        for row, request in zip(rows, _requests(self.family, batch, rows)):
            groups.setdefault(self.family.denoise_group_key(request), []).append(row)
        return list(groups.values())

    def prepare_output(self, batch):
        size = len(batch[schema.ID])
        if self.expert == 0:  # the conditioning goes on to the second expert's pool
            out = _copy_without(batch, (schema.INITIAL_NOISE,))
            out[schema.seconds_column(self.stage)] = np.zeros(size)
            out[schema.DENOISE_HANDOVER] = np.full(size, b"", dtype=object)
            return out
        forwarded = () if self.forward_conditioning else self.columns
        out = _copy_without(batch, (*forwarded, schema.INITIAL_NOISE, schema.DENOISE_HANDOVER))
        if self.expert is None:
            out[schema.seconds_column(self.stage)] = np.zeros(size)
        for name in self.latent_columns:
            out[name] = [None] * size
        return out

    def finish(self, out):
        if self.expert != 0:
            for name in self.latent_columns:
                out[name] = _latents_column(out[name])
        if self.forward_conditioning:
            def keep(row: int) -> bool:
                stage, error = out[schema.ERROR_STAGE][row], out[schema.ERROR_TYPE][row]
                if stage == self.stage and error == FloatingPointError.__name__:
                    return True  # rejected here (non-finite latents): the next attempt needs its conditioning
                return self.forward_conditioning == "all" and not stage

            keep_conditioning(out, self.columns, keep)
        return out

    def process(self, batch, out, rows):
        conditioning = {name: [tensors.unpack(batch[name][row]) for row in rows] for name in self.columns}
        requests = _requests(self.family, batch, rows)
        self.faults.model_call()
        if self.expert == 0:
            for row, handover in zip(rows, self.family.denoise_first_expert(requests, conditioning)):
                out[schema.DENOISE_HANDOVER][row] = handover
            return
        if self.expert == 1:
            handover = [batch[schema.DENOISE_HANDOVER][row] for row in rows]
            denoised = self.family.denoise_second_expert(requests, conditioning, handover)
        else:
            noise = None
            if schema.INITIAL_NOISE in batch:
                noise = [tensors.unpack(batch[schema.INITIAL_NOISE][row]) for row in rows]
            denoised = self.family.denoise(requests, conditioning, noise)
        # one dict of named latents per row (`latents`, and a family's extra ones such as its audio's)
        latents = [value if isinstance(value, dict) else {schema.LATENTS: value} for value in denoised]
        for row, named in zip(rows, latents):
            if self.faults.poisoned(str(batch[schema.ID][row])) and not is_retry(batch, row):
                named[schema.LATENTS][...] = np.nan
        for row, named in zip(rows, latents):
            if not all(np.isfinite(value).all() for value in named.values()):
                raise FloatingPointError(f"denoiser produced non-finite latents for row {batch[schema.ID][row]!r}")
        for row, named in zip(rows, latents):
            for name in self.latent_columns:
                out[name][row] = named[name]


class DecodeWorker(StageWorker):
    """Pool C: VAE decode, media encoding and the upload, so pixels never enter Ray's object store.

    With `latents_metadata` set (output.save_latents), each row's latents are also saved as a
    safetensors object next to its media. Rows without a `latents` column (a decode job) read their
    latents from the object their `latents_uri` names.

    Rows that arrive with their conditioning (see DenoiseWorker) leave with it only when their error is one
    of `keep_conditioning_for` ((stage, error type) pairs: the quality gate's rejections); every other row's
    is emptied here, so the driver holds the conditioning of rejected rows only.
    """

    stage = schema.STAGE_DECODE
    keep_conditioning_for: frozenset[tuple[str, str]] = frozenset()

    def __init__(self, model: ModelRef, num_gpus: float, dtype: str, torch_threads: int,
                 output_uri: str, storage_options: HiddenOptions, image_format: str, video_format: str,
                 latents_metadata: dict[str, Any] | None = None, tiled: bool = False,
                 metrics_job: str = DEFAULT_JOB, media_folder: str = "media", reject_blank: bool = False,
                 memory_budget_gb: float | None = None, peak_memory: DecodePeakMemory | None = None,
                 clip_score: ClipGateSettings | None = None, png_compress_level: int = 1,
                 keep_conditioning_for: tuple[tuple[str, str], ...] = ()) -> None:
        from latentmill.io import storage

        self.keep_conditioning_for = frozenset(tuple(pair) for pair in keep_conditioning_for)
        self.output_uri = output_uri
        self.media_folder = media_folder  # the output store's (io.outputs.media_folder)
        self.reject_blank = reject_blank
        self.clip_settings = clip_score
        self.storage_options = storage_options
        self.fs, self.root = storage.resolve(output_uri, storage_options.reveal())
        self.image_format, self.video_format = image_format, video_format
        self.png_compress_level = png_compress_level
        self.latents_metadata = latents_metadata
        self.tiled = tiled
        self.num_gpus, self.memory_budget_gb, self.peak_memory = num_gpus, memory_budget_gb, peak_memory
        super().__init__(model, num_gpus, dtype, torch_threads, metrics_job)

    def load(self) -> None:
        from latentmill.actors.decode_memory import plan_decode_memory

        self.family.load_decoder(self.device, self.dtype)
        self.low_memory = self.tiled  # tiled decoding for every batch (asked for, or after running out of memory)
        if self.tiled:
            self.family.low_memory_decode(True)
        self.memory_plan = plan_decode_memory(self.family, self.device, self.num_gpus, self.memory_budget_gb,
                                              self.peak_memory, self.dtype)
        self.clip = None
        if self.clip_settings is not None:
            from latentmill.models.clip_score import ClipScorer, resolve_clip

            folder = resolve_clip(self.clip_settings.model, self.clip_settings.storage_options.reveal())
            self.clip = ClipScorer(folder, self.device, self.dtype)

    def __call__(self, batch):
        if schema.LATENTS not in batch:
            batch = self._read_latents(batch)
        return super().__call__(batch)

    def _read_latents(self, batch):
        """Latents of a decode job's rows from their saved objects; an unreadable one fails its row. A family's
        further latents (its sound's) come along where every row's object has them."""
        from latentmill.io import latents as saved, storage

        batch = dict(batch)
        for column in (schema.ERROR_STAGE, schema.ERROR_TYPE, schema.ERROR_MESSAGE):
            batch[column] = np.array(batch[column], copy=True)  # Ray's batch arrays are read-only
        options = self.storage_options.reveal()
        values, extras = [], {name: [] for name in self.family.extra_latent_columns}
        for row, uri in enumerate(batch[schema.LATENTS_URI]):
            value, extra = None, {}
            if not batch[schema.ERROR_STAGE][row]:
                try:
                    value, extra, _ = saved.decode_all_latents(storage.read_bytes(*storage.resolve(str(uri), options)))
                except Exception as exc:  # noqa: BLE001 - a missing or broken object fails its row only
                    mark_error(batch, row, self.stage, RuntimeError(f"cannot read the latents {uri}: {exc}"))
            values.append(value)
            for name, column in extras.items():
                column.append(extra.get(name))
        batch[schema.LATENTS] = _latents_column(values)
        for name, column in extras.items():
            if all(extra is not None for extra, value in zip(column, values) if value is not None):
                batch[name] = _latents_column(column)
        return batch

    def _extra_latent_columns(self, batch) -> tuple[str, ...]:
        """The family's extra latents this batch has (a decode job's saved latents may lack them)."""
        return tuple(name for name in self.family.extra_latent_columns if name in batch)

    def group(self, batch, rows):
        groups: dict[tuple, list[int]] = {}
        names = (schema.LATENTS, *self._extra_latent_columns(batch))
        for row in rows:
            groups.setdefault(tuple(np.shape(batch[name][row]) for name in names), []).append(row)
        return list(groups.values())

    def prepare_output(self, batch):
        out = _copy_without(batch, (schema.LATENTS, *self.family.extra_latent_columns))
        size = len(batch[schema.ID])
        out[schema.seconds_column(self.stage)] = np.zeros(size)
        out[schema.OUTPUT_URI] = np.full(size, "", dtype=object)
        out[schema.BYTES] = np.zeros(size, dtype=np.int64)
        out[schema.SHA256] = np.full(size, "", dtype=object)
        out[schema.MIME_TYPE] = np.full(size, "", dtype=object)
        out[schema.DECODE_MODE] = np.full(size, "", dtype=object)
        if self.family.has_audio:
            for name in schema.AUDIO_COLUMNS:
                out[name] = np.full(size, None, dtype=object)
        out[schema.PHASH] = np.full(size, "", dtype=object)
        if self.clip is not None:
            out[schema.CLIP_SCORE] = np.full(size, np.nan)
        if self.latents_metadata is not None:
            out[schema.LATENTS_URI] = np.full(size, "", dtype=object)
            out[schema.LATENTS_SHA256] = np.full(size, "", dtype=object)
        return out

    def process(self, batch, out, rows):
        from latentmill.io import media, perceptual

        latents = np.stack([np.asarray(batch[schema.LATENTS][row], dtype=np.float32) for row in rows])
        extra = {name: np.stack([np.asarray(batch[name][row], dtype=np.float32) for row in rows])
                 for name in self._extra_latent_columns(batch)}
        requests = _requests(self.family, batch, rows)
        mode = self._planned_mode(latents)
        try:
            decoded = self._decode(latents, requests, mode)
        except Exception as exc:
            if not is_out_of_memory(exc) or self.low_memory:
                raise
            # Out of memory: switch this actor to tiled/sliced decoding and retry the batch; if that
            # fails too, the batch is retried row by row before a row becomes an error.
            log.warning("decode ran out of memory on a batch of %d; retrying with tiled decoding", len(rows))
            self.low_memory, mode = True, TILED
            decoded = self._decode(latents, requests, mode)
        out[schema.DECODE_MODE][rows] = mode
        tracks = self.family.decode_audio(extra, requests) if self.family.has_audio and extra else [None] * len(rows)
        frames = media.to_uint8(decoded)
        for row, row_frames, request in zip(rows, frames, requests):
            if self.faults.poisoned(request.id, "blank") and not is_retry(batch, row):
                row_frames[...] = 0
        scores = self.clip.scores(list(frames), [request.prompt for request in requests]) if self.clip else None
        for position, (row, row_frames, request, track) in enumerate(zip(rows, frames, requests, tracks)):
            if self.reject_blank and is_blank(row_frames):
                mark_error(out, row, self.stage, BlankImage(f"row {request.id!r} decoded to a blank image"))
                continue
            if scores is not None:
                out[schema.CLIP_SCORE][row] = scores[position]
                if self.clip_settings.min is not None and not scores[position] >= self.clip_settings.min:
                    attempt = int(batch[schema.ATTEMPT][row]) + 1 if schema.ATTEMPT in batch else 1
                    mark_error(out, row, self.stage, LowClipScore(
                        f"row {request.id!r} failed the quality gate clip_score on attempt {attempt}: it scored "
                        f"{scores[position]:.2f}, below quality.clip_score.min {self.clip_settings.min:g}"))
                    continue
            out[schema.PHASH][row] = perceptual.frames_hash(row_frames)
            self._write(batch, out, row, row_frames, track)
            if self.latents_metadata is not None:
                self._save_latents(out, row, latents[position], request,
                                   {name: values[position] for name, values in extra.items()})

    def finish(self, out):
        if schema.CONDITIONING_KEPT in out:
            columns = tuple(name for name in self.family.conditioning_columns() if name in out)
            keep_conditioning(out, columns, lambda row: bool(out[schema.CONDITIONING_KEPT][row]) and (
                out[schema.ERROR_STAGE][row], out[schema.ERROR_TYPE][row]) in self.keep_conditioning_for)
        return out

    def _planned_mode(self, latents: np.ndarray) -> str:
        """full, sliced or tiled for this batch, from the decode's measured peak memory and the actor's budget."""
        if self.low_memory:
            return TILED
        if self.memory_plan is None:
            return FULL
        mode = self.memory_plan.mode(latents.size, len(latents))
        if mode != FULL:
            log.info("decode of %d row(s) with latents %s: estimated peak %.3g GiB over the %.3g GiB left beside the "
                     "VAE; decoding %s", len(latents), latents.shape[1:], self.memory_plan.estimate(latents.size) / 2**30,
                     self.memory_plan.available_bytes / 2**30, mode)
        return mode

    def _decode(self, latents: np.ndarray, requests: list[Request], mode: str) -> np.ndarray:
        self.faults.model_call()
        if mode == SLICED:
            return np.concatenate([self.family.decode(latents[i:i + 1], requests[i:i + 1])
                                   for i in range(len(requests))])
        if mode == TILED:
            self.family.low_memory_decode(True, latents.shape[-2:])  # tiles smaller than these latents
            try:
                return self.family.decode(latents, requests)
            finally:
                if not self.low_memory:  # tiled for this batch only
                    self.family.low_memory_decode(False)
        return self.family.decode(latents, requests)

    def _save_latents(self, out, row: int, latents: np.ndarray, request: Request,
                      extra: dict[str, np.ndarray]) -> None:
        """The row's latents (and its further ones) next to its media; the manifest row (written after) names both."""
        from latentmill.io import latents as saved, storage

        parameters = request.columns()
        data = saved.encode_latents(latents, {**self.latents_metadata, "parameters": parameters}, extra)
        key = media_key(request.id, saved.EXTENSION)
        storage.put_bytes(self.fs, storage.join(self.root, saved.LATENTS_FOLDER, key), data)
        out[schema.LATENTS_URI][row] = storage.join(self.output_uri, saved.LATENTS_FOLDER, key)
        out[schema.LATENTS_SHA256][row] = hashlib.sha256(data).hexdigest()

    def _write(self, batch, out, row: int, frames: np.ndarray, track: AudioTrack | None = None) -> None:
        from latentmill.io import media, storage

        if self.family.is_video:
            if track is not None and not media.carries_audio(self.video_format):
                track = None  # e.g. apng: the video alone, and the manifest says it has no sound
            data = media.encode_video(frames, float(batch[schema.FPS][row]), self.video_format,
                                      audio=None if track is None else track.samples,
                                      sample_rate=None if track is None else track.sample_rate,
                                      compress_level=self.png_compress_level)
            extension, mime = media.format_info(self.video_format)
            if track is not None:
                out[schema.AUDIO_SAMPLE_RATE][row] = track.sample_rate
                out[schema.AUDIO_CHANNELS][row] = track.samples.shape[0]
                out[schema.AUDIO_SECONDS][row] = track.seconds
        else:
            data = media.encode_image(frames[0], self.image_format, compress_level=self.png_compress_level)
            extension, mime = media.format_info(self.image_format)
        key = media_key(str(batch[schema.ID][row]), extension)
        uri = storage.join(self.output_uri, self.media_folder, key)
        storage.put_bytes(self.fs, storage.join(self.root, self.media_folder, key), data)
        out[schema.OUTPUT_URI][row] = uri
        out[schema.BYTES][row] = len(data)
        out[schema.SHA256][row] = hashlib.sha256(data).hexdigest()
        out[schema.MIME_TYPE][row] = mime


def stage_workers() -> dict[str, Callable[..., StageWorker]]:
    return {
        schema.STAGE_ENCODE: TextEncodeWorker,
        schema.STAGE_DENOISE: DenoiseWorker,
        schema.STAGE_DECODE: DecodeWorker,
    }


def default_threads(num_cpus: float) -> int:
    return max(1, min(round(num_cpus), os.cpu_count() or 1))
