"""latentmill: bulk image and video generation with latent diffusion models on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentmill.version import __version__

if TYPE_CHECKING:
    from latentmill.pipelines.interpolate import InterpolationSummary
    from latentmill.pipelines.job import RunSummary

__all__ = ["__version__", "decode", "interpolate", "run"]


def run(input_uri: str, output_uri: str, model: str | None = None, config: str | Path | None = None,
        **sections: dict[str, Any]) -> RunSummary:
    """The `latentmill run` command from Python.

    `sections` override job-file sections, e.g. `defaults={"num_inference_steps": 20}`,
    `output={"image_format": "webp"}` or `stages={"denoise": {"size": 4, "num_gpus": 1}}`. Raises ConfigError or JobError with the
    same messages the command prints.

    >>> summary = latentmill.run("prompts.parquet", "s3://renders/today", model="/models/sd15")
    """
    from latentmill.config import load_config
    from latentmill.pipelines.job import run_job

    overrides: dict[str, Any] = {key: dict(value) for key, value in sections.items()}
    overrides.setdefault("input", {})["uri"] = input_uri
    overrides.setdefault("output", {})["uri"] = output_uri
    if model is not None:
        overrides.setdefault("model", {})["path"] = model
    return run_job(load_config(config, overrides))


def decode(latents_uri: str, output_uri: str, model: str | None = None, tiling: bool = False,
           config: str | Path | None = None, **sections: dict[str, Any]) -> RunSummary:
    """The `latentmill decode` command from Python: decode a run's saved latents again.

    `model` defaults to the source run's model; any checkpoint of the same family and latent space
    works (another VAE). `sections` as for `run`, e.g. `output={"image_format": "webp"}`.
    """
    from latentmill.config import load_config
    from latentmill.pipelines.job import JobError, run_job
    from latentmill.pipelines.redecode import LatentsMismatch, source_model

    overrides: dict[str, Any] = {key: dict(value) for key, value in sections.items()}
    overrides["decode"] = {"latents": latents_uri, "tiling": tiling}
    overrides.setdefault("output", {})["uri"] = output_uri
    job = load_config(config, overrides)
    if model is None:
        try:
            model = source_model(latents_uri, job.storage.fsspec_options())
        except LatentsMismatch as exc:
            raise JobError(str(exc)) from None
    job.model.path = model
    return run_job(job)


def interpolate(keyframes_uri: str, output_uri: str, model: str | None = None, config: str | Path | None = None,
                **sections: dict[str, Any]) -> InterpolationSummary:
    """The `latentmill interpolate` command from Python: one MP4 per transition of a keyframe table.

    `sections` as for `run`, plus `interpolate={"frames": 24, "fps": 12, "easing": "ease-in-out"}`.
    """
    from latentmill.config import load_config
    from latentmill.pipelines.interpolate import run_interpolation

    overrides: dict[str, Any] = {key: dict(value) for key, value in sections.items()}
    overrides.setdefault("interpolate", {})
    overrides.setdefault("input", {})["uri"] = keyframes_uri
    overrides.setdefault("output", {})["uri"] = output_uri
    if model is not None:
        overrides.setdefault("model", {})["path"] = model
    return run_interpolation(load_config(config, overrides))
