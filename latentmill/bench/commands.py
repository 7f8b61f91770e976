"""`latentmill bench ...` handlers: run a benchmark, print its Markdown table, write JSON + Markdown."""

from __future__ import annotations

import sys
from pathlib import Path


def bench_command(args) -> int:
    kind = args.bench_command
    if kind == "compare":
        from latentmill.bench.compare import run_compare

        run_compare(args)
        name = "compare"
    elif kind == "scaling":
        from latentmill.bench.scaling import run_scaling

        run_scaling(args)
        name = "scaling"
    elif kind == "driver-memory":
        from latentmill.bench.driver_memory import run_driver_memory

        run_driver_memory(args)
        name = "driver_memory"
    else:  # argparse already refuses other values
        print(f"latentmill: unknown benchmark {kind!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print((out / f"{name}.md").read_text())
    print(f"results: {out / (name + '.json')}, {out / (name + '.md')}")
    return 0
