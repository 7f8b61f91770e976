"""The peer pattern: Ray's Stable Diffusion batch example, one whole diffusers pipeline per actor.

As in that example, each actor loads the complete pipeline (text encoder, denoiser, VAE) once and
calls it on a batch of prompts inside ``map_batches``. To compare like with like it produces what
latentmill produces: every row keeps its own seed (a generator per row), and the actor encodes and
writes each image itself, so pixels stay out of the object store here too (the example returns PIL
images to the driver, which is slower; this variant is the peer's best case).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class PeerPipelineWorker:
    """map_batches callable: prompts in, written media out (id, output_uri, seconds, denoise_seconds)."""

    def __init__(self, model, params: dict[str, Any], num_gpus: float, threads: int, output_uri: str,
                 storage_options: dict[str, Any], job_seed: int, media_format: str, dtype: str = "float32") -> None:
        from latentmill.io import storage

        started = time.perf_counter()
        self.family = model.family()
        device, torch_dtype = self.family.prepare_runtime(num_gpus, dtype, threads)
        self.pipe = self.family.reference_pipeline(device, torch_dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.params, self.job_seed, self.media_format = params, job_seed, media_format
        self.output_uri = output_uri
        self.fs, self.root = storage.resolve(output_uri, storage_options)
        self.load_seconds = time.perf_counter() - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from latentmill.io import media, storage
        from latentmill.pipelines.validate import derived_seed

        started = time.perf_counter()
        ids = [str(i) for i in batch["id"]]
        prompts = [str(p) for p in batch["prompt"]]
        params = dict(self.params)
        kwargs: dict[str, Any] = dict(
            prompt=prompts,
            negative_prompt=[""] * len(prompts),
            height=params["height"],
            width=params["width"],
            num_inference_steps=params["num_inference_steps"],
            guidance_scale=params["guidance_scale"],
            generator=[self.family.reference_generator(derived_seed(self.job_seed, i)) for i in ids],
            output_type="np",
        )
        if self.family.is_video:
            kwargs["num_frames"] = params["num_frames"]
            result = self.pipe(**kwargs)
            frames = np.asarray(result.frames, dtype=np.float32)
        else:
            result = self.pipe(**kwargs)
            frames = np.asarray(result.images, dtype=np.float32)[:, None]
        # A simulated pipeline reports its denoiser's device time; a diffusers one does not (NaN).
        denoise_seconds = getattr(result, "stage_seconds", {}).get("denoise", float("nan"))
        frames = media.to_uint8(frames)
        uris = []
        for row_id, row_frames in zip(ids, frames):
            if self.family.is_video:
                data = media.encode_video(row_frames, float(params.get("fps") or 8.0), self.media_format)
            else:
                data = media.encode_image(row_frames[0], self.media_format)
            extension, _ = media.format_info(self.media_format)
            key = f"{storage.safe_key(row_id)}.{extension}"
            storage.put_bytes(self.fs, storage.join(self.root, "media", key), data)
            uris.append(storage.join(self.output_uri, "media", key))
        per_row = (time.perf_counter() - started) / len(ids)
        return {
            "id": np.asarray(ids, dtype=object),
            "output_uri": np.asarray(uris, dtype=object),
            "seconds": np.full(len(ids), per_row),
            "denoise_seconds": np.full(len(ids), denoise_seconds / len(ids)),
        }


def peer_dataset(table_path: str, model, params: dict[str, Any], batch_size: int, actors: int,
                 num_cpus: float, num_gpus: float, threads: int, output_uri: str, job_seed: int,
                 media_format: str, dtype: str = "float32"):
    """The peer's Ray Data plan: read, split into batch-sized blocks (as latentmill does), one pool."""
    import ray.data

    ds = ray.data.read_parquet(table_path).select_columns(["id", "prompt"])
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    args: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_format": "numpy",
        "num_cpus": num_cpus,
        "compute": ray.data.ActorPoolStrategy(size=actors),
        "fn_constructor_kwargs": {
            "model": model, "params": params, "num_gpus": num_gpus, "threads": threads,
            "output_uri": output_uri, "storage_options": {}, "job_seed": job_seed, "media_format": media_format,
            "dtype": dtype,
        },
    }
    if num_gpus:
        args["num_gpus"] = num_gpus
    return ds.map_batches(PeerPipelineWorker, **args)
