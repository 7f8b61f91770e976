"""Dataset synthesis job: N samples per prompt through the same three-pool pipeline.

Submit it to a cluster with::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m latentmill.jobs.synthesize --input s3://bucket/prompts/ \\
            --output s3://bucket/synthetic/v1 --samples-per-prompt 8 --seed 1234 \\
            --config infra/job-cluster.yaml --pushgateway http://pushgateway:9091

Every prompt row becomes N requests: sample k of row ``<id>`` has id ``<id>-s<k>`` and its own seed
derived from the job seed and that id, so the dataset is reproducible and a sample never depends on its
batch mates. The manifest has one row per sample (``sample_index`` says which); media land under
``<output>/media/<id>-s<k>.<ext>``. A row's own ``seed`` column, when present, seeds its samples instead of
the job seed. Each prompt is encoded once for its N samples. ``--layout webdataset`` or ``parquet`` writes
shards instead of one object per sample (README, "Synthesizing a dataset"). Exit codes: see
``latentmill.jobs.entry``.
"""

from __future__ import annotations

import argparse
import sys

from latentmill.jobs import entry
from latentmill.jobs.cli import add_dataset_arguments, dataset_overrides

JOB_NAME = "latentmill-synthesize"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m latentmill.jobs.synthesize",
        description="Generate N samples per prompt row (one output row per sample, each with its own "
        "derived seed) through the latentmill pipeline.",
    )
    parser.add_argument("--input", "-i", required=True, help="Parquet file, folder, glob or URI of the prompts")
    parser.add_argument("--output", "-o", required=True, help="folder or URI of the synthetic dataset")
    parser.add_argument("--samples-per-prompt", "-n", type=positive_int, required=True,
                        help="samples to generate for every prompt row")
    add_dataset_arguments(parser)
    entry.add_common_arguments(parser, JOB_NAME)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = dataset_overrides(args)
    overrides.setdefault("input", {}).update(uri=args.input, samples_per_prompt=args.samples_per_prompt)
    overrides.setdefault("output", {}).update(uri=args.output)
    return entry.execute(args, overrides,
                         f"dataset synthesis, {args.samples_per_prompt} sample(s) per prompt: {args.input} -> "
                         f"{args.output}")


if __name__ == "__main__":
    sys.exit(main())
