"""The `latentmill` command line.

Imports stay light at module level so `latentmill --help` answers at once; Ray, torch and diffusers
load only when a command needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_JOB_ERROR = 1  # bad config, unreadable input, unusable model or storage: nothing was generated
EXIT_USAGE = 2  # argparse's own code for bad flags

IMAGE_FORMATS = ("png", "jpeg", "webp")
VIDEO_FORMATS = ("mp4", "apng")


def _run_parser(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="generate one image or video per prompt row",
        description=(
            "Read a Parquet prompt table, generate one image or video per row through three Ray actor "
            "pools (text encoding, denoising, VAE decoding), and write media, a manifest and error rows "
            "to DEST. Flags override the job file; everything else (pools, limits, storage) lives there."
        ),
    )
    run.add_argument("--input", "-i", help="Parquet file, folder, glob or URI (s3://...) of the prompt table")
    run.add_argument("--output", "-o", help="output folder or URI; receives media/, manifest/, errors/, summary.json")
    run.add_argument("--model", "-m", help="builtin:tiny-image, builtin:tiny-video, a diffusers folder or URI "
                     "(default: builtin:tiny-image)")
    run.add_argument("--config", "-c", type=Path, help="YAML job file (see README: 'The job file')")
    run.add_argument("--prompt-column", help="name of the prompt column (default: prompt)")
    run.add_argument("--limit", type=int, help="use only the first N rows")
    run.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    run.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    run.add_argument("--height", type=int, help="output height in pixels (default: the model's)")
    run.add_argument("--width", type=int, help="output width in pixels (default: the model's)")
    run.add_argument("--num-frames", type=int, help="frames per video (video models)")
    run.add_argument("--seed", type=int, help="job seed; rows without a seed derive theirs from it and their id")
    run.add_argument("--format", choices=IMAGE_FORMATS + VIDEO_FORMATS,
                     help="media format: png/jpeg/webp for images, mp4/apng for videos")
    run.add_argument("--ray-address", help="connect to this Ray cluster instead of starting Ray locally")
    run.add_argument("--no-progress", action="store_true", help="hide Ray's progress bars")
    run.add_argument("--pushgateway", metavar="URL",
                     help="push the run's final metrics to this Prometheus Pushgateway (e.g. http://pushgateway:9091)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve the driver's metrics at http://127.0.0.1:PORT/metrics during the run")


def _models_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="built-in tiny models")
    actions = models.add_subparsers(dest="models_command", required=True)
    init = actions.add_parser("init-tiny", help="write the built-in tiny image and video checkpoints to DIR")
    init.add_argument("dir", type=Path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentmill",
        description="Bulk image and video generation with latent diffusion models on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _run_parser(subparsers)
    _models_parser(subparsers)
    return parser


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config dict that the given flags stand for."""
    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("input", "uri", args.input)
    put("input", "prompt_column", args.prompt_column)
    put("input", "limit", args.limit)
    put("output", "uri", args.output)
    put("model", "path", args.model)
    put("defaults", "num_inference_steps", args.steps)
    put("defaults", "guidance_scale", args.guidance)
    put("defaults", "height", args.height)
    put("defaults", "width", args.width)
    put("defaults", "num_frames", args.num_frames)
    put("defaults", "seed", args.seed)
    put("ray", "address", args.ray_address)
    put("metrics", "pushgateway", getattr(args, "pushgateway", None))
    put("metrics", "port", getattr(args, "metrics_port", None))
    if args.no_progress:
        put("ray", "progress_bars", False)
    if args.format in IMAGE_FORMATS:
        put("output", "image_format", args.format)
    elif args.format in VIDEO_FORMATS:
        put("output", "video_format", args.format)
    return overrides


def _run(args: argparse.Namespace) -> int:
    from latentmill.config import ConfigError, load_config

    try:
        config = load_config(args.config, run_overrides(args))
    except ConfigError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR

    from latentmill.pipelines.job import JobError, run_job

    try:
        summary = run_job(config)
    except JobError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR
    print()
    print(summary.table())
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    from latentmill.models.tiny import init_tiny

    for name, path in init_tiny(args.dir).items():
        print(f"{name}: {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {"run": _run, "models": _models}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
