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
    elif kind == "report":
        return _report(Path(args.results))
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


def _report(path: Path) -> int:
    """Re-derive the steady-state figures of a compare.json or scaling.json from its arrival curves and
    rewrite the Markdown next to it."""
    import json

    report = json.loads(path.read_text())
    if "points" in report and "linearity" in report:
        from latentmill.bench.scaling import rederive, scaling_markdown

        markdown = scaling_markdown(rederive(report))
    elif "runs" in report:
        from latentmill.bench.compare import compare_markdown, rederive

        markdown = compare_markdown(rederive(report))
    else:
        print(f"latentmill: {path} is not a compare.json or scaling.json", file=sys.stderr)
        return 2
    path.write_text(json.dumps(report, indent=2, default=str))
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0
