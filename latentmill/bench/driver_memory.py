"""`latentmill bench driver-memory`: the driver's peak RSS while streaming a large prompt table.

Runs `latentmill run` in a subprocess on a simulated model whose times are shrunk (`@SCALE`: the point
is the driver's memory, not speed; the prompt embeddings keep their real size) and samples that
process's RSS with psutil every 0.2 s; the peak RSS and USS of Ray's worker processes by type (the id
ledger's shards, the validation tasks, the stage actors) are sampled alongside every second. Rows ask
for small pictures (`--size`, 64x64) and each run's media is deleted after it: a million real-size PNGs
would cost hours of encoding and hundreds of GB, and neither touches the driver.

RSS also counts the pages of Ray's object store a process has mapped to write or read blocks: the store
hands out fresh pages as the run goes on, so that part grows with the store's use, whatever the process
keeps. Every second the driver's USS outside the object store (its own pages) and the store's pages in
its RSS are sampled too, and the workers' USS leaves the store out (`bench.monitor`), so what a process
keeps can be told apart from the store's pages it has touched.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from latentmill.bench import arithmetic as ar
from latentmill.bench.compare import machine_description, make_prompt_table

log = logging.getLogger(__name__)


def measure(rows: int, model: str, batch_size: int, out: Path, size: int = 64) -> dict[str, Any]:
    import psutil

    from latentmill.bench.monitor import ProcessMonitor, own_and_store

    table = make_prompt_table(out / "inputs" / f"prompts-{rows}-{size}px.parquet", rows, row_group_size=10_000,
                              size=size)
    output = out / "runs" / f"driver-memory-{rows}"
    if output.exists():
        shutil.rmtree(output)
    pool = {"batch_size": batch_size, "num_cpus": 0.25, "num_gpus": 0.0}
    job = {
        "input": {"uri": str(table)},
        "output": {"uri": str(output)},
        "model": {"path": model},
        "stages": {"encode": {**pool, "size": 1}, "denoise": {**pool, "size": 2}, "decode": {**pool, "size": 2}},
        "ray": {"progress_bars": False},
    }
    job_file = out / "inputs" / f"driver-memory-{rows}.yaml"
    job_file.write_text(yaml.safe_dump(job))
    command = [sys.executable, "-m", "latentmill.jobs.cli", "run", "--config", str(job_file), "--no-progress"]
    log.info("bench driver-memory: %d rows: %s", rows, " ".join(command))
    started = time.perf_counter()
    log_file = out / "runs" / f"driver-memory-{rows}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log_handle, ProcessMonitor(interval=1.0, uss=True, gpu=False) as workers:
        process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT)
        driver = psutil.Process(process.pid)
        series: list[tuple[float, float]] = []
        own_series: list[tuple[float, float, float]] = []  # (t, USS outside the store, store pages in RSS)
        peak = 0
        while process.poll() is None:
            try:
                rss = driver.memory_info().rss
                if rss and len(series) % 5 == 0:
                    own, store = own_and_store(driver)
                    own_series.append((time.perf_counter() - started, own / 2**20, store / 2**20))
            except psutil.Error:
                break
            if rss == 0:  # exited between poll() and the sample (a zombie reports no memory)
                continue
            peak = max(peak, rss)
            series.append((time.perf_counter() - started, rss / 2**20))
            time.sleep(0.2)
        code = process.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"latentmill run failed with exit code {code}; see {log_file}")
    summary = json.loads((output / "summary.json").read_text())
    shutil.rmtree(output / "media", ignore_errors=True)
    step = max(1, len(series) // 200)
    return {
        "rows": rows,
        "model": model,
        "batch_size": batch_size,
        "size": size,
        "peak_rss_mb": peak / 2**20,
        "peak_uss_mb": max((uss for _, uss, _ in own_series), default=None),
        "peak_object_store_rss_mb": max((store for _, _, store in own_series), default=None),
        "rss_at_end_mb": series[-1][1] if series else None,
        "wall_seconds": wall,
        "rows_per_s": rows / wall,
        "outputs_written": summary["outputs_written"],
        "rows_failed": summary["rows_failed"],
        "command": " ".join(command),
        "job": job,
        "rss_series_mb": series[::step],
        "uss_and_object_store_series_mb": own_series[::max(1, len(own_series) // 200)],
        "uss_last_tenth_median_mb": _last_tenth_median(own_series, wall),
        "workers": {kind: {"processes": v["actors"], "peak_rss_mb": v["peak_rss_mb"], "peak_uss_mb": v["peak_uss_mb"],
                           "peak_object_store_rss_mb": v["peak_object_store_rss_mb"]}
                    for kind, v in workers.summary().items()},
    }


def _last_tenth_median(series: list[tuple[float, float, float]], wall: float) -> float | None:
    """The driver's USS where the run ends, without its spikes: the median of the last tenth's samples."""
    last = sorted(uss for t, uss, _ in series if t >= 0.9 * wall)
    return last[len(last) // 2] if last else None


def run_driver_memory(args) -> dict[str, Any]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(r) for r in str(args.rows).split(",") if r.strip()]
    points = []
    for rows in sizes:
        points.append(measure(rows, args.model, args.batch_size, out, args.size))
        log.info("bench driver-memory: %d rows: peak driver RSS %.0f MiB in %.0f s",
                 rows, points[-1]["peak_rss_mb"], points[-1]["wall_seconds"])
        _write(out, points, args)
    return _write(out, points, args)


def _write(out: Path, points: list[dict[str, Any]], args) -> dict[str, Any]:
    growth = uss_growth = None
    if len(points) >= 2:
        growth = ar.growth(points[0]["peak_rss_mb"], points[-1]["peak_rss_mb"])
        if points[0].get("peak_uss_mb") and points[-1].get("peak_uss_mb"):
            uss_growth = ar.growth(points[0]["peak_uss_mb"], points[-1]["peak_uss_mb"])
    report = {
        "command": (f"latentmill bench driver-memory --rows {args.rows} --model {args.model} "
                    f"--batch-size {args.batch_size} --size {args.size}"),
        "machine": machine_description(),
        "points": points,
        "growth_first_to_last": growth,
        "uss_growth_first_to_last": uss_growth,
    }
    (out / "driver_memory.json").write_text(json.dumps(report, indent=2, default=str))
    rows = [[p["rows"], p["peak_rss_mb"], p.get("peak_uss_mb"), p.get("uss_last_tenth_median_mb"),
             p.get("peak_object_store_rss_mb"), p["rss_at_end_mb"], p["wall_seconds"], p["rows_per_s"],
             p["outputs_written"], p["rows_failed"]] for p in points]
    md = [f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", "",
          ar.markdown_table(["rows", "driver peak RSS MiB", "driver peak USS MiB (outside the object store)",
                             "driver USS MiB, median of the run's last tenth", "object-store pages in driver RSS, "
                             "peak MiB", "driver RSS at end MiB", "wall s", "rows/s", "outputs", "failed"], rows), ""]
    if growth is not None:
        md.append(f"Peak RSS growth from {points[0]['rows']} to {points[-1]['rows']} rows: {growth:+.1%}")
    if uss_growth is not None:
        md.append(f"Peak USS growth from {points[0]['rows']} to {points[-1]['rows']} rows: {uss_growth:+.1%}")
    kinds = sorted({kind for p in points for kind in p.get("workers", {})})
    if kinds:
        def peak(point, kind, measure):
            return (point.get("workers", {}).get(kind) or {}).get(measure)

        measures = {"RSS": "peak_rss_mb", "USS": "peak_uss_mb", "object-store RSS": "peak_object_store_rss_mb"}
        md += ["", ar.markdown_table(
            ["Ray process type", *(f"peak {name} MiB at {p['rows']} rows" for name in measures for p in points)],
            [[kind, *(peak(p, kind, measure) for measure in measures.values() for p in points)] for kind in kinds]),
            "", "USS leaves out the object store's pages; a pooled worker counts under the task it was running."]
    (out / "driver_memory.md").write_text("\n".join(md) + "\n")
    return report
