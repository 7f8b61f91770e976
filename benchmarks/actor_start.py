"""CPU a stage actor spends loading and leaving, with full garbage collections paused while it loads and without.

    LATENTMILL_CACHE=/tmp/lm .venv/bin/python benchmarks/actor_start.py [--model builtin:tiny-flux] [--repeats 3]

Each measurement is a fresh Python process, as each Ray actor is: it imports Ray (a Ray worker has it
already), unpickles a stage worker's arguments as the driver builds them (the job's own `prepare`, once, in
this process), builds the worker and reports the CPU it has used, from its start, once the worker has
loaded. The parent takes the child's whole CPU from the OS when it has exited, so the difference is what
the child spent leaving (Python's collections at exit). "paused" is the stage workers' default
(`full_collections_paused_then_frozen`: no full collections while loading, then one, then a freeze);
"running" swaps it for a plain context to measure how it was before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker_arguments(model: str, folder: Path) -> dict[str, Path]:
    """Each stage worker's class and arguments as the driver builds them, pickled as Ray would send them."""
    from latentmill.bench.compare import make_prompt_table
    from latentmill.config import JobConfig
    from latentmill.pipelines.job import prepare
    from latentmill.pipelines.plan import stage_constructors

    config = JobConfig.model_validate({"input": {"uri": str(make_prompt_table(folder / "prompts.parquet", 4))},
                                       "output": {"uri": str(folder / "out")}, "model": {"path": model}})
    options, _, ref, _, rules = prepare(config)
    paths = {}
    for name, _, worker, kwargs in stage_constructors(config, rules, ref, options):
        paths[name] = folder / f"{name}.pickle"
        paths[name].write_bytes(pickle.dumps((worker.__name__, kwargs)))
    return paths


def child(arguments: Path, collector: str) -> None:
    __import__("ray")  # a Ray worker process has imported it before the actor's class arrives

    class_name, kwargs = pickle.loads(arguments.read_bytes())
    from latentmill.actors import stages

    if collector == "running":
        stages.full_collections_paused_then_frozen = contextlib.nullcontext
    getattr(stages, class_name)(**kwargs)
    print(json.dumps({"loaded": time.process_time()}))


def measure(arguments: Path, collector: str) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, __file__, "--child", str(arguments), collector],
                            capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"loaded": figures["loaded"], "exit": total - figures["loaded"], "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-flux")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("ARGUMENTS", "COLLECTOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    arguments = worker_arguments(args.model, Path(tempfile.mkdtemp(prefix="latentmill-actor-start-")))
    print(f"model {args.model}, {args.repeats} fresh processes each (median); CPU seconds per stage worker")
    print("| stage | full collections while loading | CPU until loaded (from the process's start) | CPU leaving "
          "| CPU in all |")
    print("|---|---|---|---|---|")
    for stage in arguments:
        runs = {"running": [], "paused": []}
        for _ in range(args.repeats):  # alternated, so drift in the machine's load hits both alike
            for collector, measured in runs.items():
                measured.append(measure(arguments[stage], collector))
        for collector, measured in runs.items():
            median = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
            print(f"| {stage} | {collector} | {median['loaded']:.2f} | {median['exit']:.2f} | {median['total']:.2f} |")


if __name__ == "__main__":
    main()
