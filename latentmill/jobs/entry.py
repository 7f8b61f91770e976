"""Shared plumbing of the `ray job submit` entry modules (`latentmill.jobs.nightly`, `.synthesize`).

An entry module builds a job config from a job file plus its own arguments, runs it on the cluster it is
submitted to (``RAY_ADDRESS`` is set by Ray's job supervisor), prints the summary and exits with a code
a scheduler can act on:

    0  done, failed rows within the error budget
    1  the job could not run or stopped (bad config, missing input partition, storage down, ...)
    2  bad command-line arguments
    3  done, but more rows failed than the error budget (max_failed) allows
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_JOB_ERROR = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3


def add_common_arguments(parser: argparse.ArgumentParser, job_name: str) -> None:
    """Flags every entry module shares; each overrides the job file's field of the same meaning."""
    parser.add_argument("--config", "-c", type=Path, help="YAML job file (pools, model, storage, limits, ...)")
    parser.add_argument("--model", "-m", help="model path or URI (default: the job file's, else builtin:tiny-image)")
    parser.add_argument("--seed", type=int, help="job seed; rows without a seed derive theirs from it and their id")
    parser.add_argument("--limit", type=int, help="use only the first N rows")
    parser.add_argument("--max-failed", metavar="N|FRACTION",
                        help="error budget: a count (10), a fraction (0.05) or a percentage (5%%) of the rows "
                        "read; past it the job exits 3 (default: the job file's max_failed, else no budget)")
    parser.add_argument("--pushgateway", metavar="URL", help="push the run's final metrics to this Pushgateway")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve the driver's metrics on this port during the run")
    parser.add_argument("--job-name", help=f"the metrics `job` label and Pushgateway job (default: the job "
                        f"file's metrics.job_name, else {job_name})")
    parser.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, set by `ray job submit`)")
    parser.add_argument("--no-progress", action="store_true", help="hide Ray's progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.set_defaults(default_job_name=job_name)


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("model", "path", args.model)
    put("defaults", "seed", args.seed)
    put("input", "limit", args.limit)
    put("metrics", "pushgateway", args.pushgateway)
    put("metrics", "port", args.metrics_port)
    put("metrics", "job_name", args.job_name)
    put("ray", "address", args.ray_address)
    if args.no_progress:
        put("ray", "progress_bars", False)
    result: dict[str, Any] = dict(overrides)
    if args.max_failed is not None:
        result["max_failed"] = args.max_failed
    return result


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(args: argparse.Namespace, overrides: dict[str, Any]):
    """The validated JobConfig: job file + flags; the entry's job name unless the file or a flag sets one."""
    from latentmill.config import load_config

    config = load_config(args.config, merge(common_overrides(args), overrides))
    if "job_name" not in config.metrics.model_fields_set:
        config.metrics.job_name = args.default_job_name
    return config


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is logged, not to the stream it was made with (a
    process that calls the entry point more than once may have replaced it in between)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_to_stderr(verbose: bool) -> None:
    """The job's log on stderr, once per process, unless the root logger already has a handler."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[_CurrentStderr()])


def execute(args: argparse.Namespace, overrides: dict[str, Any], describe: str) -> int:
    """Load the config, run the job, print the summary; returns the exit code."""
    log_to_stderr(args.verbose)
    from latentmill.config import ConfigError

    try:
        config = load(args, overrides)
    except ConfigError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR

    from latentmill.pipelines.job import JobError, run_job

    print(f"latentmill: {describe}", flush=True)
    try:
        summary = run_job(config)
    except JobError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return EXIT_JOB_ERROR
    print()
    print(summary.table(), flush=True)
    exceeded = getattr(summary, "budget_exceeded", None)
    if exceeded is None:  # a RunSummary without the field: decide from the config's budget
        exceeded = config.budget_exceeded(summary.rows_failed, summary.rows_read)
    if exceeded:
        print(f"latentmill: {summary.rows_failed} of {summary.rows_read} rows failed, past the error budget "
              f"(max_failed={config.max_failed}); exit {EXIT_BUDGET}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK
