"""Calibration: each stage's cost on this machine, measured by running the stage workers in this process."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from latentmill.planning.optimise import PlanError, StageCost, fit_stage_cost
from latentmill.schema import STAGES

CALIBRATION_PROMPT = "a photo of a cat sitting on a red sofa in the living room"



@dataclass
class Calibration:
    model: str
    hardware: str
    samples: dict[str, list[tuple[int, float]]]
    costs: dict[str, StageCost]
    row_bytes: dict[str, float]
    load_seconds: dict[str, float]
    request: dict[str, Any]
    decode_memory: dict[str, Any]  # config.DecodePeakMemory fields, plus the (elements, bytes) samples

    def decode_peak_memory(self) -> dict[str, Any]:
        """The plan file's `stages.decode.peak_memory`."""
        return {key: value for key, value in self.decode_memory.items() if key != "samples"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "request": self.request,
            "samples": {stage: [list(s) for s in samples] for stage, samples in self.samples.items()},
            "costs": {stage: asdict(cost) for stage, cost in self.costs.items()},
            "row_bytes": self.row_bytes,
            "load_seconds": self.load_seconds,
            "decode_memory": self.decode_memory,
        }


def calibrate(
    model_path: str,
    generation: dict[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4),
    repeats: int = 2,
    threads: int = 1,
    num_gpus: float = 0.0,
    dtype: str = "float32",
    storage_options: dict[str, Any] | None = None,
    media_format: str | None = None,
) -> Calibration:
    """Time every stage of the model in this process at each batch size; fit t0 and t1.

    The stages are the job's own workers (`actors.stages`), built and called here exactly as their
    actors call them on a batch of validated rows, so a calibration measures what a run does and cannot
    drift from it: the encode worker's packing, the denoise worker's grouping, the decode worker's media
    encoding and write (to a temporary folder). `generation` holds GenerationDefaults fields (height,
    width, num_inference_steps, ...); the rest come from the model's defaults. A batch of 1 runs first,
    untimed, to warm up. Each stage is measured on one whole device (or `threads` CPU threads).
    """
    import shutil
    import tempfile
    import time

    from latentmill import schema
    from latentmill.actors.stages import stage_workers
    from latentmill.io.hidden import HiddenOptions
    from latentmill.models import resolve_model

    model = resolve_model(model_path, storage_options)
    family = model.family()
    rules = calibration_rules(family, generation)

    def rows(count: int) -> dict[str, Any]:
        return calibration_rows(rules, count)

    first = rows(1)
    if first[schema.ERROR_STAGE][0]:
        raise PlanError(f"cannot calibrate {model_path}: {first[schema.ERROR_MESSAGE][0]}")
    output = tempfile.mkdtemp(prefix="latentmill-calibration-")
    formats = {"image_format": "png", "video_format": "mp4"}
    if media_format:
        formats["video_format" if family.is_video else "image_format"] = media_format
    workers = stage_workers()
    common = {"model": model, "num_gpus": num_gpus, "dtype": dtype, "torch_threads": threads}
    stages = {
        schema.STAGE_ENCODE: workers[schema.STAGE_ENCODE](**common),
        schema.STAGE_DENOISE: workers[schema.STAGE_DENOISE](**common),
        schema.STAGE_DECODE: workers[schema.STAGE_DECODE](
            **common, output_uri=output, storage_options=HiddenOptions({}), **formats),
    }
    load_seconds = {stage: worker.load_seconds for stage, worker in stages.items()}
    columns = stages[schema.STAGE_ENCODE].columns

    def run(batch: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        count = len(batch[schema.ID])
        seconds: dict[str, float] = {}
        for stage, worker in stages.items():
            started = time.perf_counter()
            batch = worker(batch)
            seconds[stage] = time.perf_counter() - started
            failed = [str(m) for m in batch[schema.ERROR_MESSAGE] if m]
            if failed:
                raise PlanError(f"cannot calibrate {model_path}: the {stage} stage failed: {failed[0]}")
            if stage == schema.STAGE_ENCODE:
                encoded = sum(len(value) for name in columns for value in batch[name]) / count
            elif stage == schema.STAGE_DENOISE:
                latents = sum(np.asarray(value).nbytes for value in batch[schema.LATENTS]) / count
        return seconds, {schema.STAGE_ENCODE: encoded, schema.STAGE_DENOISE: latents, schema.STAGE_DECODE: 0.0}

    try:
        run(first)  # warm-up: first calls allocate and pick kernels
        samples: dict[str, list[tuple[int, float]]] = {stage: [] for stage in STAGES}
        row_bytes: dict[str, float] = {}
        for size in sorted(set(batch_sizes)):
            timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
            for _ in range(max(1, repeats)):
                seconds, row_bytes = run(rows(size))
                for stage in STAGES:
                    timings[stage].append(seconds[stage])
            for stage in STAGES:
                samples[stage].append((size, statistics.median(timings[stage])))
        denoised = stages[schema.STAGE_DENOISE](stages[schema.STAGE_ENCODE](first))
        decode_memory = measure_decode_memory(stages[schema.STAGE_DECODE], denoised)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    costs = {stage: fit_stage_cost(samples[stage]) for stage in STAGES}
    return Calibration(
        model=model_path,
        hardware=describe_hardware(stages[schema.STAGE_DENOISE].device, threads),
        samples=samples,
        costs=costs,
        row_bytes=row_bytes,
        load_seconds=load_seconds,
        decode_memory=decode_memory,
        request={k: rules.defaults[k] if k != "num_frames" or family.is_video else 1
                 for k in ("height", "width", "num_inference_steps", "guidance_scale", "num_frames")},
    )


def calibration_rules(family, generation: dict[str, Any] | None):
    """Validation rules for calibration rows: `generation` (GenerationDefaults fields) over the model's
    defaults, and no size limits."""
    from latentmill.config import GenerationDefaults, Limits
    from latentmill.pipelines.validate import RowRules, resolve_defaults

    defaults = resolve_defaults(GenerationDefaults(**(generation or {})), family.generation_defaults(),
                                family.extra_parameters)
    return RowRules(prompt_column="prompt", id_column="id", defaults=defaults, job_seed=0,
                    limits=Limits(max_height=1 << 16, max_width=1 << 16, max_frames=1 << 16, max_steps=1 << 16),
                    family=family)


def calibration_rows(rules, count: int) -> dict[str, Any]:
    """`count` validated rows of one prompt (seeds 0, 1, ...), as the stage workers receive them."""
    import pyarrow as pa

    from latentmill.pipelines.validate import validate_batch

    table = pa.table({"id": [f"calibration-{i}" for i in range(count)], "prompt": [CALIBRATION_PROMPT] * count,
                      "seed": list(range(count))})
    return validate_batch(table, rules)


def measure_decode_memory(worker, denoised: dict[str, Any]) -> dict[str, Any]:
    """The decode worker's peak memory on one row's latents and on latents twice as high and wide (the
    VAE decodes any latent size), fitted per latent element (actors.decode_memory)."""
    from latentmill import schema
    from latentmill.actors.decode_memory import fit_peak_memory, peak_memory

    measured = []
    for scale in (1, 2):
        batch = dict(denoised)
        batch[schema.LATENTS] = np.repeat(np.repeat(denoised[schema.LATENTS], scale, axis=-1), scale, axis=-2)
        batch[schema.HEIGHT] = denoised[schema.HEIGHT] * scale
        batch[schema.WIDTH] = denoised[schema.WIDTH] * scale
        with peak_memory(worker.device) as peak:
            worker(batch)
        measured.append((int(batch[schema.LATENTS].size), int(peak.bytes)))
    fixed, per_element = fit_peak_memory(measured)
    dtype = str(worker.dtype).removeprefix("torch.")  # the dtype it ran in (float16 runs as float32 on a CPU)
    return {"fixed_bytes": fixed, "bytes_per_latent_element": per_element, "dtype": dtype,
            "device": str(worker.device), "samples": [list(sample) for sample in measured]}


def describe_hardware(device: Any, threads: int) -> str:
    import os
    import platform

    name = str(device)
    if name == "simulated":
        return "simulated devices (sleeping stages), " + f"{os.cpu_count()} CPU cores"
    if name.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)} ({name})"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {os.cpu_count()} cores, {threads} torch thread(s) per stage"
