"""Nightly render job: the day's prompt partition in, a dated output prefix out, metrics pushed.

Submit it to a cluster with::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m latentmill.jobs.nightly --input-root s3://bucket/prompts \\
            --output-root s3://bucket/renders --config infra/job-cluster.yaml \\
            --pushgateway http://pushgateway:9091 --max-failed 1%

Layout (Hive-style date partitions, one folder per day)::

    <input-root>/date=YYYY-MM-DD/*.parquet    the day's prompt table (any number of Parquet files)
    <output-root>/YYYY-MM-DD/                 media/, manifest/, errors/, runs/, summary.json

``--date`` defaults to today in UTC. Running the same date again resumes it: outputs already in the
manifest are kept, failed rows are retried. Exit codes: see ``latentmill.jobs.entry`` (0 ok, 1 the job
could not run, 2 bad arguments, 3 more failed rows than ``--max-failed`` allows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from latentmill.jobs import entry

JOB_NAME = "latentmill-nightly"


def partition_uris(input_root: str, output_root: str, date: dt.date) -> tuple[str, str]:
    """(the day's input partition, the day's output prefix)."""
    day = date.isoformat()
    return f"{input_root.rstrip('/')}/date={day}/", f"{output_root.rstrip('/')}/{day}"


def parse_date(text: str) -> dt.date:
    today = dt.datetime.now(dt.timezone.utc).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD, today or yesterday): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m latentmill.jobs.nightly",
        description="Render the day's prompt partition <input-root>/date=YYYY-MM-DD/ into "
        "<output-root>/YYYY-MM-DD/, push the run's metrics, exit 3 past the error budget.",
    )
    parser.add_argument("--input-root", required=True, help="folder or URI holding date=YYYY-MM-DD/ partitions")
    parser.add_argument("--output-root", required=True, help="folder or URI that receives one YYYY-MM-DD/ per day")
    parser.add_argument("--date", type=parse_date, default="today",
                        help="the day to render: YYYY-MM-DD, today (default, UTC) or yesterday")
    entry.add_common_arguments(parser, JOB_NAME)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_uri, output_uri = partition_uris(args.input_root, args.output_root, args.date)
    overrides = {"input": {"uri": input_uri}, "output": {"uri": output_uri}}
    return entry.execute(args, overrides, f"nightly render of {args.date.isoformat()}: {input_uri} -> {output_uri}")


if __name__ == "__main__":
    sys.exit(main())
