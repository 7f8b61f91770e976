"""Calibration: each stage's cost on this machine, measured by running the stage workers in this process."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from latentmill.planning.optimise import PlanError, StageCost, fit_stage_cost
from latentmill.schema import STAGES



@dataclass
class Calibration:
    model: str
    hardware: str
    samples: dict[str, list[tuple[int, float]]]
    costs: dict[str, StageCost]
    row_bytes: dict[str, float]
    load_seconds: dict[str, float]
    request: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "request": self.request,
            "samples": {stage: [list(s) for s in samples] for stage, samples in self.samples.items()},
            "costs": {stage: asdict(cost) for stage, cost in self.costs.items()},
            "row_bytes": self.row_bytes,
            "load_seconds": self.load_seconds,
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

    `generation` holds GenerationDefaults fields (height, width, num_inference_steps, ...); the rest
    come from the model's defaults. The decode stage includes media encoding, as in the decode actor.
    A batch of 1 runs first, untimed, to warm up. Each stage is measured on one whole device (or
    `threads` CPU threads).
    """
    import time

    import numpy as np

    from latentmill.config import GenerationDefaults
    from latentmill.io import media
    from latentmill.models import resolve_model
    from latentmill.pipelines.validate import resolve_defaults
    from latentmill.rows import Request, request_from

    model = resolve_model(model_path, storage_options)
    family = model.family()
    values = resolve_defaults(GenerationDefaults(**(generation or {})), family.generation_defaults(),
                              family.extra_parameters)
    if not family.is_video:
        values["num_frames"], values["fps"] = 1, 0.0

    def requests(count: int) -> list[Request]:
        prompt = "a photo of a cat sitting on a red sofa in the living room"
        return [request_from({**values, "id": f"calibration-{i}", "prompt": prompt, "seed": i},
                             tuple(family.extra_parameters)) for i in range(count)]

    reason = family.check_request(requests(1)[0])
    if reason:
        raise PlanError(f"cannot calibrate {model_path}: {reason}")
    device, torch_dtype = family.prepare_runtime(num_gpus, dtype, threads)
    load_seconds = {}
    started = time.perf_counter()
    family.load_encoder(device, torch_dtype)
    load_seconds["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    family.load_denoiser(device, torch_dtype)
    load_seconds["denoise"] = time.perf_counter() - started
    started = time.perf_counter()
    family.load_decoder(device, torch_dtype)
    load_seconds["decode"] = time.perf_counter() - started
    image_format = media_format or ("mp4" if family.is_video else "png")

    def run(batch: int) -> tuple[dict[str, float], dict[str, float]]:
        rows = requests(batch)
        seconds, sizes = {}, {}
        t = time.perf_counter()
        encoded = family.encode(rows)
        seconds["encode"] = time.perf_counter() - t
        sizes["encode"] = sum(v.nbytes for rows in encoded.tensors.values() for v in rows if v is not None) / batch
        t = time.perf_counter()
        latents = family.denoise(rows, encoded.tensors)
        seconds["denoise"] = time.perf_counter() - t
        sizes["denoise"] = sum(np.asarray(v).nbytes for v in latents) / batch
        t = time.perf_counter()
        frames = media.to_uint8(family.decode(np.stack([np.asarray(v, dtype=np.float32) for v in latents]), rows))
        for row, row_frames in zip(rows, frames):
            if family.is_video:
                media.encode_video(row_frames, row.fps or 8.0, image_format)
            else:
                media.encode_image(row_frames[0], image_format)
        seconds["decode"] = time.perf_counter() - t
        sizes["decode"] = 0.0
        return seconds, sizes

    run(1)  # warm-up: first calls allocate and pick kernels
    samples: dict[str, list[tuple[int, float]]] = {stage: [] for stage in STAGES}
    row_bytes: dict[str, float] = {}
    for batch in sorted(set(batch_sizes)):
        timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for _ in range(max(1, repeats)):
            seconds, sizes = run(batch)
            row_bytes = sizes
            for stage in STAGES:
                timings[stage].append(seconds[stage])
        for stage in STAGES:
            samples[stage].append((batch, statistics.median(timings[stage])))
    costs = {stage: fit_stage_cost(samples[stage]) for stage in STAGES}
    return Calibration(
        model=model_path,
        hardware=describe_hardware(device, threads),
        samples=samples,
        costs=costs,
        row_bytes=row_bytes,
        load_seconds=load_seconds,
        request={k: values[k] for k in ("height", "width", "num_inference_steps", "guidance_scale", "num_frames")},
    )


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
