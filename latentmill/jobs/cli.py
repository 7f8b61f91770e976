"""The `latentmill` command line.

Imports stay light at module level so `latentmill --help` answers at once; Ray, torch and diffusers
load only when a command needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from latentmill.version import __version__

EXIT_OK = 0
EXIT_JOB_ERROR = 1  # could not start (bad config, input, model, storage) or had to stop; finished outputs are kept
EXIT_USAGE = 2  # argparse's own code for bad flags
EXIT_BUDGET = 3  # the job finished, but more rows failed than max_failed allows

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
    run.add_argument("--model", "-m", help="a diffusers folder or URI, or a built-in model: builtin:shapes (trained "
                     "on coloured shapes, the demo's), builtin:tiny-image (random weights; default), tiny-video, "
                     "tiny-wan22, tiny-wan22-5b, tiny-ltx, tiny-cogvideox, "
                     "tiny-hunyuan-video15, tiny-sdxl, tiny-sd3, tiny-flux, tiny-qwen-image, tiny-z-image")
    run.add_argument("--config", "-c", type=Path, help="YAML job file (see README: 'The job file')")
    run.add_argument("--prompt-column", help="name of the prompt column (default: prompt)")
    run.add_argument("--limit", type=int, help="use only the first N rows")
    run.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    run.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    run.add_argument("--height", type=int, help="output height in pixels (default: the model's)")
    run.add_argument("--width", type=int, help="output width in pixels (default: the model's)")
    run.add_argument("--num-frames", type=int, help="frames per video (video models)")
    run.add_argument("--seed", type=int, help="job seed; rows without a seed derive theirs from it and their id")
    run.add_argument("--param", action="append", type=_model_parameter, metavar="NAME=VALUE", default=[],
                     help="a model family's extra parameter for every row, e.g. --param true_cfg_scale=4 "
                     "(repeatable; README 'Model families' lists them; a column of that name overrides it per row)")
    run.add_argument("--format", choices=IMAGE_FORMATS + VIDEO_FORMATS,
                     help="media format: png/jpeg/webp for images, mp4/apng for videos")
    run.add_argument("--max-failed", help="error budget: a count (10), fraction (0.05) or percentage (5%%) of rows; "
                     "past it the job exits with code 3")
    run.add_argument("--samples-per-prompt", type=int, help="outputs per prompt row, each with its own seed")
    add_dataset_arguments(run)
    run.add_argument("--save-latents", action="store_true",
                     help="also keep each row's final latents as DEST/latents/<key>.safetensors (for `latentmill decode`)")
    run.add_argument("--embedding-cache", metavar="URI",
                     help="reuse prompt embeddings across runs from this folder or s3:// URI (cache.embeddings): "
                     "cached rows skip the text encoder, which loads only at the first uncached row")
    run.add_argument("--ray-address", help="connect to this Ray cluster instead of starting Ray locally")
    run.add_argument("--no-progress", action="store_true", help="hide Ray's progress bars")
    sizing = run.add_mutually_exclusive_group()
    sizing.add_argument("--plan", type=Path, metavar="FILE",
                        help="pool sizes from `latentmill plan`: its stages: section is merged over the job "
                        "file's stages (the plan wins for the fields it sets)")
    sizing.add_argument("--auto-size", action="store_true",
                        help="calibrate the model on this machine first (a short in-process run) and size the "
                        "pools for the devices the run can use (ray.local_num_gpus, the GPUs here, else the CPU cores)")
    run.add_argument("--pushgateway", metavar="URL",
                     help="push the run's final metrics to this Prometheus Pushgateway (e.g. http://pushgateway:9091)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve the driver's metrics at http://127.0.0.1:PORT/metrics during the run")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a dataset's shape: which input columns it keeps, its layout and shard size."""
    parser.add_argument("--keep-columns", metavar="A,B",
                        help="input columns copied into every manifest row of the row's outputs (and each shard's json)")
    parser.add_argument("--layout", choices=("files", "webdataset", "parquet"),
                        help="files: DEST/media/ + manifest/ (default); webdataset: tar shards DEST/shards/NNNNN.tar "
                        "with a sidecar Parquet each; parquet: Parquet shards with the media in an `image` column")
    parser.add_argument("--shard-size", type=int, metavar="N", help="samples per shard (default 1000)")


def dataset_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    if args.keep_columns is not None:
        overrides["input"] = {"keep_columns": args.keep_columns}
    output = {"layout": args.layout, "shard_size": args.shard_size}
    output = {key: value for key, value in output.items() if value is not None}
    if output:
        overrides["output"] = output
    return overrides


def _decode_parser(subparsers) -> None:
    decode = subparsers.add_parser(
        "decode",
        help="decode the saved latents of an earlier run again (another VAE, format or tiling), no denoising",
        description=(
            "Run only the decode pool over the latents a run saved with --save-latents: writes media, a manifest "
            "and error rows to DEST like a run, and resumes like one. Latents of another model family or latent "
            "layout are refused before anything starts."
        ),
    )
    decode.add_argument("--latents", "-l", required=True, help="output folder or URI of a run made with --save-latents")
    decode.add_argument("--output", "-o", required=True, help="output folder or URI for the decoded media")
    decode.add_argument("--model", "-m", help="checkpoint whose VAE decodes (default: the source run's model)")
    decode.add_argument("--format", choices=IMAGE_FORMATS + VIDEO_FORMATS, help="media format")
    decode.add_argument("--tiling", action="store_true", help="tiled and sliced VAE decoding (less memory, slower)")
    decode.add_argument("--config", "-c", type=Path, help="YAML job file (stages.decode, storage, ray, metrics)")
    decode.add_argument("--limit", type=int, help="decode only the first N latents")
    decode.add_argument("--ray-address", help="connect to this Ray cluster instead of starting Ray locally")
    decode.add_argument("--no-progress", action="store_true", help="hide Ray's progress bars")


def _status_parser(subparsers) -> None:
    status = subparsers.add_parser(
        "status",
        help="progress of a running or finished job, read from its output alone (no Ray)",
        description=(
            "Count DEST's outputs (manifest rows) and failed rows (error rows of the latest run), the input's rows "
            "(Parquet footers), the rate over the latest run's recent manifest parts and an ETA, and whether the "
            "latest run has finished (its summary.json). Reads only; exits 0 whenever it could report."
        ),
    )
    status.add_argument("dest", nargs="?", help="output folder or URI of the job (default: the job file's output.uri)")
    status.add_argument("--config", "-c", type=Path,
                        help="job file: its storage section (endpoint, credentials) and input settings; without it "
                        "S3 settings come from the AWS_* environment variables")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _verify_parser(subparsers) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="re-check every output object against the manifest (size, sha256); list missing, changed, extra",
        description=(
            "Read back every object DEST's manifest names (media, saved latents, an interpolation job's videos) "
            "and compare size and sha256 with its row; list objects under media/, latents/ and videos/ that no row "
            "names. Exit 0 when everything matches, 1 on any mismatch."
        ),
    )
    verify.add_argument("dest", nargs="?", help="output folder or URI of the job (default: the job file's output.uri)")
    verify.add_argument("--config", "-c", type=Path,
                        help="job file whose storage section (endpoint, credentials) to use; without it S3 settings "
                        "come from the AWS_* environment variables")
    verify.add_argument("--size-only", action="store_true",
                        help="compare sizes only (from a listing, no object is read); saved latents, whose size the "
                        "manifest does not record, are only checked to exist")
    verify.add_argument("--threads", type=int, default=16, help="objects read at once (default 16)")
    verify.add_argument("--json", action="store_true", help="print JSON (every finding) instead of a report")


def _interpolate_parser(subparsers) -> None:
    interpolate = subparsers.add_parser(
        "interpolate",
        help="smooth transitions between keyframes: prompts and seeds blended in latent space, one MP4 each",
        description=(
            "Read a keyframe table (one transition per row: prompt_a, prompt_b, seed_a, seed_b, frames, fps, "
            "easing; or sequence, prompt, seed rows walking through keyframes) and make every frame from the two "
            "prompts' blended embeddings and the two seeds' spherically interpolated noise. Frames are kept as "
            "images; each transition becomes videos/<id>.mp4 with a row in transitions/. Resumes like a run."
        ),
    )
    interpolate.add_argument("--input", "-i", required=True, help="Parquet keyframe table (file, folder, glob or URI)")
    interpolate.add_argument("--output", "-o", required=True, help="output folder or URI")
    interpolate.add_argument("--model", "-m", help="an image model (default: builtin:tiny-image)")
    interpolate.add_argument("--frames", type=int, help="frames per transition where the table has none (default 16)")
    interpolate.add_argument("--fps", type=float, help="video frame rate where the table has none (default 8)")
    interpolate.add_argument("--easing", choices=("linear", "ease-in-out"), help="how t advances (default linear)")
    interpolate.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    interpolate.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    interpolate.add_argument("--height", type=int, help="frame height (default: the model's)")
    interpolate.add_argument("--width", type=int, help="frame width (default: the model's)")
    interpolate.add_argument("--config", "-c", type=Path, help="YAML job file (stages, storage, ray, defaults)")
    interpolate.add_argument("--ray-address", help="connect to this Ray cluster instead of starting Ray locally")
    interpolate.add_argument("--no-progress", action="store_true", help="hide Ray's progress bars")


def _models_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="built-in tiny models")
    actions = models.add_subparsers(dest="models_command", required=True)
    init = actions.add_parser("init-tiny", help="write every built-in tiny checkpoint (one per supported family) to DIR as plain diffusers folders")
    init.add_argument("dir", type=Path)
    train = actions.add_parser(
        "train-shapes",
        help="train builtin:shapes (a tiny latent diffusion model of coloured shapes) into DIR on the CPU",
        description="Train the shapes model from pictures drawn in code (a VAE, then the UNet and the CLIP "
                    "text encoder in its latent space); fixed seeds and steps, about 40 minutes on one core. "
                    "How the shipped weights were made: latentmill/models/shapes/checkpoint/HOW_MADE.md.",
    )
    train.add_argument("dir", type=Path)
    train.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1, as for the shipped weights; another count gives "
                       "slightly different weights, and more than one gains little on a model this small)")


def _plan_parser(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="calibrate each stage on this machine and recommend pool and batch sizes for a device budget",
        description=(
            "Time each stage of the model in this process (a short run at a few batch sizes), fit "
            "t0 + batch * t1 per stage, then choose batch sizes and pool sizes (GPU fractions for the "
            "encoder and VAE) that maximise rows/s within the budget. Writes a plan file for "
            "`latentmill run --plan FILE`."
        ),
    )
    plan.add_argument("--model", "-m", help="model to calibrate (default: the job file's, else builtin:tiny-image)")
    plan.add_argument("--config", "-c", type=Path, help="YAML job file whose model and defaults to use")
    plan.add_argument("--height", type=int, help="image height (default: the job's, else the model's)")
    plan.add_argument("--width", type=int, help="image width")
    plan.add_argument("--steps", type=int, help="denoising steps")
    plan.add_argument("--guidance", type=float, help="guidance scale")
    plan.add_argument("--num-frames", type=int, help="frames per video")
    budget = plan.add_mutually_exclusive_group()
    budget.add_argument("--gpus", type=float, help="GPU budget, e.g. 8 (default: the GPUs here, else --cpus)")
    budget.add_argument("--cpus", type=float, help="CPU-core budget (default: this machine's cores)")
    plan.add_argument("--fraction-grid", type=float, default=0.125,
                      help="smallest device share an encoder/VAE actor gets, and its step (default 0.125)")
    plan.add_argument("--headroom", type=float, default=0.1,
                      help="spare capacity of the encode and decode pools over the planned rate (default 0.1)")
    plan.add_argument("--share-denoiser-devices", action="store_true",
                      help="allow fractional devices for denoiser actors on a GPU budget (default: whole GPUs)")
    plan.add_argument("--batch-sizes", default="1,2,4", help="batch sizes to calibrate at (default 1,2,4)")
    plan.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (median; default 2)")
    plan.add_argument("--max-batch", type=int, help="largest batch size to recommend")
    plan.add_argument("--denoise-batch", type=int, help="use this denoiser batch size instead of choosing one")
    plan.add_argument("--cpus-per-actor", type=float, default=0.25,
                      help="num_cpus of each actor on a GPU budget (default 0.25)")
    plan.add_argument("--output", "-o", type=Path, help="write the plan file here (YAML)")


def _bench_parser(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: latentmill vs the one-pipeline-per-actor pattern, simulated scaling, driver memory",
        description="Each benchmark writes JSON and a Markdown table to --out. See BENCHMARKS.md.",
    )
    kinds = bench.add_subparsers(dest="bench_command", required=True)
    real = kinds.add_parser(
        "compare",
        help="(a) latentmill vs (b) one whole diffusers pipeline per actor vs (c) the denoiser alone, "
        "same model, prompts, parameters and resources",
    )
    real.add_argument("--model", "-m", default="builtin:tiny-image",
                      help="model for every contender (default builtin:tiny-image); with --devices a simulated "
                      "one, builtin:sim-PROFILE")
    real.add_argument("--rows", type=int, default=384, help="prompts (cycled from examples/prompts.parquet)")
    real.add_argument("--height", type=int, help="image height in pixels (default 128; with --devices the model's)")
    real.add_argument("--width", type=int, help="image width in pixels (default 128; with --devices the model's)")
    real.add_argument("--steps", type=int, help="denoising steps (default 10; with --devices the model's)")
    real.add_argument("--guidance", type=float, help="guidance scale (default 5.0; with --devices the model's)")
    real.add_argument("--devices", help="simulated devices: compare at an equal budget of N devices (a list: "
                      "8,16); (a) the planner's pools, (b) N whole-pipeline actors, (c) the device-time bound")
    real.add_argument("--prices", default="h100=2.5,l4=0.8",
                      help="with --devices: price per device-hour by type; the first type holds the denoisers "
                      "(and every peer actor), the second latentmill's encode and decode pools "
                      "(default h100=2.5,l4=0.8)")
    real.add_argument("--time-scale", type=float, default=1.0,
                      help="with --devices: multiply every simulated time (default 1)")
    real.add_argument("--batches-per-device", type=int, default=6,
                      help="with --devices: denoiser batches per device, the run's length (default 6)")
    real.add_argument("--share-denoiser-devices", action="store_true",
                      help="with --devices: let (a)'s denoisers share their devices with the VAE and text "
                      "encoder (default: whole devices)")
    real.add_argument("--plan", type=Path, help="latentmill's pools from this plan file (default: `plan` for --cpus)")
    real.add_argument("--cpus", type=float, help="CPU budget shared by every contender (default: this machine's cores)")
    real.add_argument("--gpus", type=float, help="GPU budget shared by every contender (on a GPU machine)")
    real.add_argument("--batch-size", type=int, default=8,
                      help="denoiser (and peer, and bound) batch size (default 8; 0: the plan's)")
    real.add_argument("--repeats", type=int, default=1, help="alternate a and b this many times; medians reported")
    real.add_argument("--contenders", default="a,b,c", help="which of a,b,c to run (default all)")
    real.add_argument("--out", type=Path, default=Path("bench-results"),
                      help="folder for compare.json, compare.md and the runs' outputs (default bench-results)")
    sim = kinds.add_parser("scaling", help="simulated devices: efficiency at 1, 4, 8, 16 denoiser devices")
    sim.add_argument("--profiles", default="sdxl-30,lcm-4", help="comma-separated simulated profiles")
    sim.add_argument("--devices", default="1,4,8,16", help="denoiser device counts")
    sim.add_argument("--batches-per-device", type=int, default=30,
                     help="denoiser batches each device runs (run length; default 30)")
    sim.add_argument("--time-scale", type=float, default=1.0,
                     help="multiply every simulated time (default 1: denoiser batches of 1.2-2 s)")
    sim.add_argument("--size", type=int, default=None,
                     help="height and width of every row's output (default: the profile's real size, whose media "
                     "encoding a small host cannot keep up with at many devices; e.g. 64 to measure the rest)")
    sim.add_argument("--out", type=Path, default=Path("bench-results"),
                     help="folder for scaling.json, scaling.md and the runs' outputs (default bench-results)")
    report = kinds.add_parser("report", help="re-derive the steady-state figures of a compare.json or "
                              "scaling.json from its recorded arrival curves; rewrite its Markdown")
    report.add_argument("results", type=Path)
    rss = kinds.add_parser("driver-memory", help="driver peak RSS while streaming N rows through a simulated model")
    rss.add_argument("--rows", default="10000,100000", help="comma-separated table sizes")
    rss.add_argument("--model", default="builtin:sim-sd15-50@0.002",
                     help="a simulated model with shrunk times (default builtin:sim-sd15-50@0.002)")
    rss.add_argument("--batch-size", type=int, default=64, help="batch size of every stage (default 64)")
    rss.add_argument("--size", type=int, default=64,
                     help="height and width of every row's picture (default 64; media is deleted after each run)")
    rss.add_argument("--out", type=Path, default=Path("bench-results"),
                     help="folder for driver-memory.json and .md (default bench-results)")


def _report_parser(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="one static HTML page of an output: counts, runs, timings, errors, a gallery; side by side for several",
        description=(
            "Write DEST/report/index.html: the run counts and history, outputs over time, seconds per row in each "
            "stage, errors grouped by stage and type, and a filterable gallery of thumbnails (written to "
            "report/thumbs/). With two or more outputs of one prompt table, also a side-by-side view by row id. "
            "The page needs no network: open it from disk or serve the folder from object storage."
        ),
    )
    report.add_argument("dest", nargs="+", help="output folder(s) or URI(s) of runs (s3://...)")
    report.add_argument("--output", "-o", help="folder or URI for index.html and thumbs/ (default: DEST/report, "
                        "the first DEST's)")
    report.add_argument("--max-items", type=int, default=500, metavar="N",
                        help="at most N outputs per gallery and N rows side by side; more are sampled "
                        "deterministically (default 500)")
    report.add_argument("--config", "-c", type=Path, help="YAML job file whose storage: section reads s3:// outputs")


def _model_parameter(text: str) -> tuple[str, float | int | str]:
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return name.strip(), kind(value)
        except ValueError:
            pass
    return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentmill",
        description="Bulk image and video generation with latent diffusion models on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument("--version", action="version", version=f"latentmill {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _run_parser(subparsers)
    _decode_parser(subparsers)
    _status_parser(subparsers)
    _verify_parser(subparsers)
    _interpolate_parser(subparsers)
    _models_parser(subparsers)
    _plan_parser(subparsers)
    _bench_parser(subparsers)
    _report_parser(subparsers)
    return parser


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config dict that the given flags stand for."""
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("input", "uri", args.input)
    put("input", "prompt_column", args.prompt_column)
    put("input", "limit", args.limit)
    put("input", "samples_per_prompt", args.samples_per_prompt)
    if args.max_failed is not None:
        overrides["max_failed"] = args.max_failed
    put("output", "uri", args.output)
    put("model", "path", args.model)
    put("defaults", "num_inference_steps", args.steps)
    put("defaults", "guidance_scale", args.guidance)
    put("defaults", "height", args.height)
    put("defaults", "width", args.width)
    put("defaults", "num_frames", args.num_frames)
    put("defaults", "seed", args.seed)
    if args.param:
        put("defaults", "model_parameters", dict(args.param))
    put("cache", "embeddings", args.embedding_cache)
    put("ray", "address", args.ray_address)
    put("metrics", "pushgateway", getattr(args, "pushgateway", None))
    put("metrics", "port", getattr(args, "metrics_port", None))
    if args.no_progress:
        put("ray", "progress_bars", False)
    if args.save_latents:
        put("output", "save_latents", True)
    if args.format in IMAGE_FORMATS:
        put("output", "image_format", args.format)
    elif args.format in VIDEO_FORMATS:
        put("output", "video_format", args.format)
    for section, values in dataset_overrides(args).items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def _run(args: argparse.Namespace) -> int:
    from latentmill.config import ConfigError, load_config

    try:
        config = load_config(args.config, run_overrides(args))
        if getattr(args, "plan", None) or getattr(args, "auto_size", False):
            from latentmill.planning import sized_config

            config = sized_config(config, args.config, run_overrides(args), args.plan)
    except (ConfigError, ValueError) as exc:
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
    return EXIT_BUDGET if summary.budget_exceeded else EXIT_OK


def _decode(args: argparse.Namespace) -> int:
    import latentmill
    from latentmill.config import ConfigError
    from latentmill.pipelines.job import JobError

    sections: dict[str, Any] = {}
    if args.format in IMAGE_FORMATS:
        sections["output"] = {"image_format": args.format}
    elif args.format in VIDEO_FORMATS:
        sections["output"] = {"video_format": args.format}
    if args.limit:
        sections["input"] = {"limit": args.limit}
    if args.ray_address:
        sections["ray"] = {"address": args.ray_address}
    if args.no_progress:
        sections.setdefault("ray", {})["progress_bars"] = False
    try:
        summary = latentmill.decode(args.latents, args.output, model=args.model, tiling=args.tiling,
                                    config=args.config, **sections)
    except (ConfigError, JobError, ValueError) as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR
    print()
    print(summary.table())
    return EXIT_BUDGET if summary.budget_exceeded else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from latentmill.jobs.inspection import status_command

    return status_command(args)


def _verify(args: argparse.Namespace) -> int:
    from latentmill.jobs.inspection import verify_command

    return verify_command(args)


def _interpolate(args: argparse.Namespace) -> int:
    import latentmill
    from latentmill.config import ConfigError
    from latentmill.pipelines.job import JobError

    settings = {key: value for key, value in (("frames", args.frames), ("fps", args.fps), ("easing", args.easing))
                if value is not None}
    defaults = {key: value for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                                              ("height", args.height), ("width", args.width)) if value is not None}
    ray_settings = {"address": args.ray_address} if args.ray_address else {}
    if args.no_progress:
        ray_settings["progress_bars"] = False
    try:
        summary = latentmill.interpolate(args.input, args.output, model=args.model, config=args.config,
                                         interpolate=settings, defaults=defaults, ray=ray_settings)
    except (ConfigError, JobError, ValueError) as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR
    print()
    print(summary.table())
    for transition_id, reason in sorted(summary.failures.items()):
        print(f"  failed {transition_id}: {reason}")
    return EXIT_OK if not summary.transitions_failed else EXIT_BUDGET


def _models(args: argparse.Namespace) -> int:
    if args.models_command == "train-shapes":
        from latentmill.models.shapes.train import train_shapes

        train_shapes(args.dir, args.threads)
        return EXIT_OK
    from latentmill.models.tiny import init_tiny

    for name, path in init_tiny(args.dir).items():
        print(f"{name}: {path}")
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from latentmill.planning import plan_command

    return plan_command(args)


def _bench(args: argparse.Namespace) -> int:
    from latentmill.bench.commands import bench_command

    return bench_command(args)


def _report(args: argparse.Namespace) -> int:
    from latentmill.config import ConfigError
    from latentmill.report import ReportError, build_report, storage_options_from

    try:
        options = storage_options_from(args.config) if args.config else None
        result = build_report(args.dest, args.output, args.max_items, options)
    except (ConfigError, ReportError, ValueError) as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR
    print(result.line())
    print(result.index_uri)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Model libraries' load chatter and per-step bars would drown the job's own log; local Ray workers
    # inherit these too.
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from latentmill.jobs.entry import log_to_stderr

    log_to_stderr(args.verbose)
    if args.command in ("status", "verify"):  # they read an output folder: no Ray, no model
        return (_status if args.command == "status" else _verify)(args)
    handlers = {"run": _run, "decode": _decode, "interpolate": _interpolate, "models": _models, "plan": _plan,
                "bench": _bench, "report": _report}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
