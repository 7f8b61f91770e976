"""The prompt-embedding cache: the same prompts rendered twice, the second run with every row cached.

    .venv/bin/python benchmarks/embedding_cache.py --rows 1000 [--model builtin:tiny-sd3]

Prints, per run: wall seconds, encode-stage seconds (the manifest's encode_seconds summed), rows whose
embeddings came from the cache, and the encode actor's peak RSS (sampled from outside by the benchmark
monitor). One local Ray serves both runs, so the second does not pay Ray's start-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import latentmill
    from latentmill.bench.compare import base_prompts
    from latentmill.bench.monitor import ProcessMonitor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--model", default="builtin:tiny-sd3")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="latentmill-embedding-cache-"))
    prompts = base_prompts()
    table = work / "prompts.parquet"  # every prompt distinct, so the first run finds nothing cached
    pq.write_table(pa.table({"id": [f"row-{i:06d}" for i in range(args.rows)],
                             "prompt": [f"{prompts[i % len(prompts)]}, take {i}" for i in range(args.rows)]}), table)
    pool = {"batch_size": args.batch_size, "num_cpus": 0.5, "torch_threads": 1}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    print("| run | wall s | encode-stage s (sum over rows) | rows cached | encode actor peak RSS MiB |")
    print("|---|---|---|---|---|")
    for run in ("first (empty cache)", "second (same prompts)"):
        output = work / run.split()[0]
        with ProcessMonitor(uss=False, gpu=False) as monitor:
            started = time.perf_counter()
            latentmill.run(str(table), str(output), model=args.model, cache={"embeddings": str(work / "cache")},
                           stages={"encode": dict(pool), "denoise": dict(pool), "decode": dict(pool)},
                           ray={"progress_bars": False})
            wall = time.perf_counter() - started
        manifest = pq.read_table(output / "manifest").to_pydict()
        encode = (monitor.summary(["TextEncodeWorker"]).get("TextEncodeWorker") or {}).get("peak_rss_mb")
        print(f"| {run} | {wall:.1f} | {sum(manifest['encode_seconds']):.2f} | "
              f"{sum(bool(v) for v in manifest['embeddings_cached'])} of {len(manifest['id'])} | {encode:.0f} |")
    ray.shutdown()
    print(f"\ncommand: .venv/bin/python benchmarks/embedding_cache.py --rows {args.rows} --model {args.model} "
          f"--batch-size {args.batch_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
