"""Figures for the latent workflows: a run with saved latents vs decoding them again; smoothness.

Run: .venv/bin/python benchmarks/latent_workflows.py [--rows 32] [--model builtin:tiny-image] [--out DIR]
Prints: wall seconds of the run (3 pools) and of `latentmill decode` over its latents (decode pool only),
both including Ray start-up and actor loading; and, for one 16-frame transition, the mean absolute pixel
change between consecutive frames next to the change between its two ends.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--model", default="builtin:tiny-image")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import latentmill
    from latentmill.io import media

    work = args.out or Path(tempfile.mkdtemp(prefix="latent-workflows-"))
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"prompt": f"prompt number {i}", "seed": i} for i in range(args.rows)]),
                   work / "prompts.parquet")
    quiet = {"ray": {"progress_bars": False}}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # one Ray for all three jobs

    started = time.perf_counter()
    run = latentmill.run(str(work / "prompts.parquet"), str(work / "run"), model=args.model,
                         output={"save_latents": True}, **quiet)
    run_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = latentmill.decode(str(work / "run"), str(work / "decoded"), **quiet)
    decode_seconds = time.perf_counter() - started

    frames = 16
    pq.write_table(pa.Table.from_pylist([{"id": "t", "prompt_a": "a red circle", "prompt_b": "a blue square",
                                          "seed_a": 1, "seed_b": 2, "frames": frames}]), work / "keyframes.parquet")
    latentmill.interpolate(str(work / "keyframes.parquet"), str(work / "interpolated"), model=args.model, **quiet)
    images = np.stack([media.decode_image((work / "interpolated" / "media" / f"t-f{k:04d}.png").read_bytes())
                       for k in range(frames)]).astype(float)
    steps = [np.abs(images[k + 1] - images[k]).mean() for k in range(frames - 1)]
    ends = np.abs(images[-1] - images[0]).mean()

    print(f"model {args.model}, {args.rows} rows, 2 CPU cores; work folder {work}")
    print("| job | rows | wall seconds | rows/s |")
    print("|---|---|---|---|")
    print(f"| run with --save-latents (3 pools) | {run.outputs_written} | {run_seconds:.1f} | {run.outputs_written / run_seconds:.2f} |")
    print(f"| latentmill decode (decode pool only) | {again.outputs_written} | {decode_seconds:.1f} | {again.outputs_written / decode_seconds:.2f} |")
    print(f"interpolation, {frames} frames: consecutive-frame change mean {np.mean(steps):.2f}, max {max(steps):.2f} "
          f"(0-255 scale); change between the ends {ends:.2f}; max step / ends = {max(steps) / ends:.3f} "
          f"(the suite requires < {4 / frames:.3f})")


if __name__ == "__main__":
    main()
