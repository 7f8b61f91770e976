"""Host CPU per row in each stage actor, outside model calls, and what an idle Ray actor costs.

    .venv/bin/python benchmarks/host_work.py [--model builtin:sim-sdxl-30@0.00001] [--rows 64]
        [--batch-size 4] [--png-compress-level 1]

Runs the job's own three stage workers in this process on a simulated model whose sleeps are shrunk to
nothing, and feeds them the way a Ray Data map actor does: each batch is cut from an Arrow block,
converted to numpy, passed through the worker, and converted back to an Arrow block. So the figures are
the stage code's own host work per row (unpacking embeddings, copying latents, the frames' uint8
conversion, media encoding, hashing, the write), without Ray's transport. It times PNG encoding at
several zlib levels on two 1024x1024 pictures. Then it measures the CPU an
idle Ray actor process burns per second (Ray's own threads): in a real run each stage actor pays that
on top, per second of wall time rather than per row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_cpu_per_row(model: str, rows: int, batch_size: int, png_compress_level: int) -> dict[str, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    from latentmill.bench.compare import make_prompt_table
    from latentmill.config import JobConfig
    from latentmill.pipelines.job import prepare
    from latentmill.pipelines.plan import stage_constructors
    from latentmill.pipelines.validate import validate_batch

    work = Path(tempfile.mkdtemp(prefix="latentmill-host-work-"))
    table_path = make_prompt_table(work / "prompts.parquet", rows)
    config = JobConfig.model_validate({
        "input": {"uri": str(table_path)}, "output": {"uri": str(work / "out"), "png_compress_level": png_compress_level},
        "model": {"path": model}})
    options, _, ref, _, rules = prepare(config)
    workers = {name: worker(**kwargs) for name, _, worker, kwargs in stage_constructors(config, rules, ref, options)}
    block = BlockAccessor.batch_to_block(validate_batch(pq.read_table(table_path), rules))
    cpu = {}
    for stage, worker in workers.items():
        outputs = []
        started = time.process_time()
        for start in range(0, block.num_rows, batch_size):
            batch = BlockAccessor.for_block(block.slice(start, batch_size)).to_batch_format("numpy")
            outputs.append(BlockAccessor.batch_to_block(worker(batch)))
        cpu[stage] = 1000 * (time.process_time() - started) / block.num_rows
        block = pa.concat_tables(outputs)
    return cpu


def png_levels(size: int = 1024, levels: tuple[int, ...] = (1, 3, 6, 9)) -> list[tuple[str, int, float, float]]:
    """CPU ms and MB per PNG at each zlib level, on a grainy picture (the simulated decoder's texture, like
    a photograph) and a smooth one (flat regions and gradients, like much generated art)."""
    import numpy as np

    from latentmill.io import media

    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    base = (0.5 * y + 0.3 * x + 0.2 * np.sin(20 * x * y + np.arange(3, dtype=np.float32))) % 1
    grain = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    figures = []
    for name, amount in (("grainy", 0.08), ("smooth", 0.02)):
        frame = media.to_uint8(np.clip(base + amount * grain, 0, 1))
        for level in levels:
            started = time.process_time()
            data = b"".join(media.encode_image(frame, "png", compress_level=level) for _ in range(3))
            figures.append((name, level, 1000 * (time.process_time() - started) / 3, len(data) / 3 / 1e6))
    return figures


def idle_actor_cpu(seconds: float) -> float:
    """CPU milliseconds per second of an actor that does nothing (Ray's own threads in its process)."""
    import os

    import psutil
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Idle:
            def pid(self) -> int:
                return os.getpid()

        actor = Idle.remote()  # held: a dropped handle would end the actor
        process = psutil.Process(ray.get(actor.pid.remote()))
        time.sleep(3)  # past start-up
        before = process.cpu_times()
        time.sleep(seconds)
        after = process.cpu_times()
        return 1000 * ((after.user + after.system) - (before.user + before.system)) / seconds
    finally:
        ray.shutdown()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:sim-sdxl-30@0.00001")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--png-compress-level", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    cpu = stage_cpu_per_row(args.model, args.rows, args.batch_size, args.png_compress_level)
    levels = png_levels()
    idle = idle_actor_cpu(args.idle_seconds)
    print(f"model {args.model}, {args.rows} rows, batch {args.batch_size}, png_compress_level {args.png_compress_level}")
    print("| stage | host CPU ms per row |")
    print("|---|---|")
    for stage, ms in cpu.items():
        print(f"| {stage} | {ms:.1f} |")
    print("\n| 1024x1024 picture | PNG zlib level | CPU ms | MB |")
    print("|---|---|---|---|")
    for name, level, ms, mb in levels:
        print(f"| {name} | {level} | {ms:.0f} | {mb:.2f} |")
    print(f"\nidle Ray actor: {idle:.1f} ms of CPU per second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
