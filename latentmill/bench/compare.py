"""`latentmill bench compare`: latentmill vs the one-pipeline-per-actor peer vs the denoiser alone.

All three contenders get the same model, prompt table, generation parameters and resources:

(a) latentmill: `run_job` with the plan's pools (by default `latentmill plan` for this machine's budget);
(b) the peer (`latentmill.bench.peer`): as many actors as (a) has in all, each with an equal share of
    (a)'s CPUs (or one whole GPU each), the same torch threads per actor, the denoiser's batch size;
(c) the bound: the denoiser stage alone in this process, one actor's threads, the same batch size, on
    embeddings computed beforehand (untimed). Its rate times (a)'s denoiser devices is what (a) could
    reach if nothing but denoising cost anything.

With ``--devices N`` the three run on simulated devices at an equal budget of N devices instead
(`latentmill.bench.device_compare`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from latentmill.bench import arithmetic as ar

log = logging.getLogger(__name__)

FALLBACK_PROMPTS = (
    "a photo of a cat sitting on a red sofa in the living room",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "a futuristic city skyline at night with neon lights and flying cars",
    "a small cabin in a snowy forest, smoke rising from the chimney",
)
WORKER_KINDS = ("TextEncodeWorker", "DenoiseWorker", "DecodeWorker")


def base_prompts() -> list[str]:
    import pyarrow.parquet as pq

    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root / "examples" / "prompts.parquet"
        if path.exists():
            return [str(p) for p in pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist() if p]
    return list(FALLBACK_PROMPTS)


def make_prompt_table(path: Path, rows: int, row_group_size: int | None = None, size: int | None = None) -> Path:
    """`rows` prompts with ids row-000000..., cycled from examples/prompts.parquet; `size`: every row's
    height and width (else the model's defaults)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = base_prompts()
    columns = {
        "id": [f"row-{i:07d}" for i in range(rows)],
        "prompt": [prompts[i % len(prompts)] for i in range(rows)],
    }
    if size is not None:
        columns["height"] = columns["width"] = pa.array([size] * rows, pa.int64())
    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def read_manifest(output_dir: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((output_dir / "manifest").glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def pool_resources(stages: dict[str, Any]) -> dict[str, Any]:
    """Totals of a config's pools: actors, CPUs, GPUs, torch threads."""
    from latentmill.actors.stages import default_threads

    actors = cpus = gpus = threads = 0.0
    for pool in stages.values():
        size = pool.min_size
        actors += size
        cpus += size * pool.num_cpus
        gpus += size * pool.num_gpus
        threads += size * (pool.torch_threads or default_threads(pool.num_cpus))
    return {"actors": int(actors), "cpus": cpus, "gpus": gpus, "threads": int(threads)}


def peer_resources(totals: dict[str, Any]) -> dict[str, Any]:
    """The peer's pool for the same resources: see the module doc."""
    if totals["gpus"] >= 1:
        actors = int(math.floor(totals["gpus"] + 1e-9))
        return {"actors": actors, "num_cpus": totals["cpus"] / actors, "num_gpus": 1.0,
                "threads": max(1, round(totals["threads"] / actors))}
    actors = totals["actors"]
    return {"actors": actors, "num_cpus": totals["cpus"] / actors, "num_gpus": 0.0,
            "threads": max(1, round(totals["threads"] / actors))}


def _curve_stats(curve: list[tuple[float, int]], wall: float, monitor) -> dict[str, Any]:
    curve = ar.normalize_curve(curve)
    window = ar.steady_window(curve) if curve else None
    return {
        "rows": curve[-1][1] if curve else 0,
        "wall_seconds": wall,
        "first_output_seconds": ar.first_output_seconds(curve) if curve else None,
        "steady_rows_per_s": ar.steady_rate(curve) if window else None,
        "steady_window": list(window) if window else None,
        "steady_cpu_seconds_per_row": ar.ratio(monitor.cpu_between(window[0], window[1]), window[2]) if window else None,
        "curve": curve,
    }


def run_latentmill(config, label: str) -> dict[str, Any]:
    import ray

    from latentmill.bench.monitor import ProcessMonitor
    from latentmill.pipelines.job import run_job

    curve: list[tuple[float, int]] = []
    with ProcessMonitor() as monitor:
        started = time.perf_counter()
        summary = run_job(config, on_progress=lambda s: curve.append((time.perf_counter() - started, s.outputs_written)))
        wall = time.perf_counter() - started
    ray.shutdown()
    result = _curve_stats(curve, wall, monitor)
    result.update(label=label, contender="a", summary_wall_seconds=summary.wall_seconds,
                  rows_failed=summary.rows_failed, memory=monitor.summary(list(WORKER_KINDS)),
                  cpu=monitor.cpu_summary())
    result["cpu_seconds_per_row"] = ar.ratio(result["cpu"]["total"], result["rows"])
    manifest = read_manifest(Path(config.output.uri))
    pools = {stage: pool for stage, pool in config.stages.items()}
    busy: dict[str, Any] = {}
    if manifest is not None and result["steady_window"]:
        start, end, _ = result["steady_window"]
        norm = ar.normalize_curve(curve)
        for stage, pool in pools.items():
            seconds = manifest.column(f"{stage}_seconds").to_pylist()
            total = float(sum(seconds))
            busy[stage] = {
                "actors": pool.min_size,
                "busy_seconds": total,
                "busy_fraction_run": ar.busy_fraction(total, pool.min_size, wall),
                "busy_fraction_steady": ar.busy_fraction(ar.busy_in_window(seconds, norm, start, end),
                                                         pool.min_size, end - start),
            }
    result["pools"] = busy
    return result


def run_peer(config, table: Path, model, params: dict[str, Any], batch_size: int, resources: dict[str, Any],
             output: Path, label: str) -> dict[str, Any]:
    import ray

    from latentmill.bench.monitor import ProcessMonitor
    from latentmill.bench.peer import peer_dataset
    from latentmill.pipelines.job import init_ray

    curve: list[tuple[float, int]] = []
    seconds: list[float] = []
    with ProcessMonitor() as monitor:
        started = time.perf_counter()
        init_ray(config)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = peer_dataset(str(table), model, params, batch_size, resources["actors"], resources["num_cpus"],
                          resources["num_gpus"], resources["threads"], str(output), config.defaults.seed,
                          config.output.image_format, config.stages.denoise.dtype)
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            done += len(batch["id"])
            seconds.extend(float(s) for s in batch["seconds"])
            curve.append((time.perf_counter() - started, done))
        wall = time.perf_counter() - started
    ray.shutdown()
    result = _curve_stats(curve, wall, monitor)
    result.update(label=label, contender="b", memory=monitor.summary(["PeerPipelineWorker"]),
                  cpu=monitor.cpu_summary())
    result["cpu_seconds_per_row"] = ar.ratio(result["cpu"]["total"], result["rows"])
    actors = resources["actors"]
    total = float(sum(seconds))
    pools = {"pipeline": {"actors": actors, "busy_seconds": total,
                          "busy_fraction_run": ar.busy_fraction(total, actors, wall)}}
    if result["steady_window"]:
        start, end, _ = result["steady_window"]
        norm = ar.normalize_curve(curve)
        pools["pipeline"]["busy_fraction_steady"] = ar.busy_fraction(
            ar.busy_in_window(seconds, norm, start, end), actors, end - start)
    result["pools"] = pools
    return result


def run_bound(model, params: dict[str, Any], rows: int, batch_size: int, threads: int, num_gpus: float,
              dtype: str = "float32") -> dict[str, Any]:
    """(c): the denoiser alone in this process on precomputed embeddings."""
    import psutil

    from latentmill.pipelines.validate import derived_seed
    from latentmill.rows import request_from

    family = model.family()
    prompts = base_prompts()
    defaults = {"negative_prompt": "", "num_frames": 1, "fps": 0.0}
    defaults.update({name: default for name, (_, default) in family.extra_parameters.items()})
    requests = []
    for i in range(rows):
        row_id = f"row-{i:07d}"
        requests.append(request_from({**defaults, **params, "id": row_id, "prompt": prompts[i % len(prompts)],
                                      "seed": derived_seed(0, row_id)}, tuple(family.extra_parameters)))
    batches = [requests[i:i + batch_size] for i in range(0, rows, batch_size)]
    device, torch_dtype = family.prepare_runtime(num_gpus, dtype, threads)
    family.load_encoder(device, torch_dtype)
    embeds = []
    for batch in batches:
        encoded = family.encode(batch).tensors
        embeds.append(encoded)
    started = time.perf_counter()
    family.load_denoiser(device, torch_dtype)
    load = time.perf_counter() - started
    family.denoise(batches[0][:1], {k: v[:1] for k, v in embeds[0].items()})  # warm-up, as an actor's first batch
    times = []
    for batch, embed in zip(batches, embeds):
        t = time.perf_counter()
        family.denoise(batch, embed)
        times.append(time.perf_counter() - t)
    total = sum(times)
    steady_rows = rows - len(batches[0])
    steady_time = total - times[0]
    return {
        "label": "c", "contender": "c", "rows": rows,
        "wall_seconds": load + total,
        "first_output_seconds": load + times[0],
        "steady_rows_per_s": steady_rows / steady_time if steady_time > 0 else rows / total,
        "batch_seconds": times,
        "load_seconds": load,
        "process_rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def run_compare(args) -> dict[str, Any]:
    from latentmill.config import load_config
    from latentmill.models import resolve_model
    from latentmill.planning import Budget, plan_for_model, read_plan_stages

    if args.devices:
        from latentmill.bench.device_compare import run_device_compare

        return run_device_compare(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"height": args.height or 128, "width": args.width or 128, "num_inference_steps": args.steps or 10,
              "guidance_scale": 5.0 if args.guidance is None else args.guidance}
    table = make_prompt_table(out / "inputs" / f"prompts-{args.rows}.parquet", args.rows)
    plan_info: dict[str, Any] = {}
    if args.plan:
        stages = read_plan_stages(args.plan)
        plan_info["plan_file"] = str(args.plan)
    else:
        budget = Budget(devices=args.gpus, kind="gpu") if args.gpus else \
            Budget(devices=args.cpus or float(os.cpu_count() or 1), kind="cpu")
        plan, calibration = plan_for_model(
            args.model, budget, params, fixed_batches={"denoise": args.batch_size} if args.batch_size else None)
        stages = plan.stages_section()
        plan_info.update(plan=plan.to_dict(), calibration=calibration.to_dict(), table=plan.table())
        log.info("latentmill's pools for this benchmark:\n%s", plan.table())
    if args.batch_size:
        stages.setdefault("denoise", {})["batch_size"] = args.batch_size
        encode = stages.setdefault("encode", {})
        encode["batch_size"] = min(encode.get("batch_size", args.batch_size), args.batch_size)

    def config_for(output: Path):
        return load_config(None, {
            "input": {"uri": str(table)},
            "output": {"uri": str(output)},
            "model": {"path": args.model},
            "defaults": params,
            "stages": stages,
            "ray": {"progress_bars": False, **({"local_num_gpus": args.gpus} if args.gpus else {})},
        })

    base_config = config_for(out / "runs" / "probe")
    totals = pool_resources(dict(base_config.stages.items()))
    peer = peer_resources(totals)
    denoise_pool = base_config.stages.denoise
    batch_size = denoise_pool.batch_size
    model = resolve_model(args.model)
    contenders = {c.strip() for c in args.contenders.split(",") if c.strip()}
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = ["a", "b"] if repeat % 2 == 0 else ["b", "a"]
        for contender in order:
            if contender not in contenders:
                continue
            output = out / "runs" / f"{contender}-{repeat}"
            if output.exists():
                import shutil

                shutil.rmtree(output)
            output.mkdir(parents=True)
            log.info("bench compare: contender %s, run %d", contender, repeat + 1)
            load = os.getloadavg()[0]
            if contender == "a":
                runs.append(run_latentmill(config_for(output), f"a-{repeat}"))
            else:
                runs.append(run_peer(base_config, table, model, params, batch_size, peer, output, f"b-{repeat}"))
            runs[-1]["load_average_before"] = load
            runs[-1]["load_average_after"] = os.getloadavg()[0]
    if "c" in contenders:
        log.info("bench compare: contender c (denoiser alone, in-process)")
        runs.append(run_bound(model, params, args.rows, batch_size,
                              denoise_pool.torch_threads or 1, 1.0 if denoise_pool.num_gpus else 0.0,
                              denoise_pool.dtype))
    report = summarize_compare(runs, totals, peer, denoise_pool, stages)
    report.update(
        command="latentmill bench compare " + " ".join(_argv_tail()),
        machine=machine_description(),
        model=args.model, rows=args.rows, params=params, batch_size=batch_size,
        resources={"latentmill": totals, "peer": peer}, **plan_info,
    )
    (out / "compare.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "compare.md").write_text(compare_markdown(report))
    return report


def _argv_tail() -> list[str]:
    import sys

    argv = sys.argv[1:]
    return argv[2:] if argv[:2] == ["bench", "compare"] else argv


def summarize_compare(runs: list[dict[str, Any]], totals: dict[str, Any], peer: dict[str, Any], denoise_pool,
                      stages: dict[str, Any]) -> dict[str, Any]:
    """Medians per contender and the ratios the issue asks for."""
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["contender"], []).append(run)

    def med(contender: str, key: str):
        return ar.median([r.get(key) for r in by.get(contender, [])])

    contenders = {}
    for c in sorted(by):
        contenders[c] = {key: med(c, key) for key in ("wall_seconds", "first_output_seconds", "steady_rows_per_s",
                                                      "cpu_seconds_per_row", "steady_cpu_seconds_per_row")}
        contenders[c]["runs"] = len(by[c])
    denoise_devices = denoise_pool.min_size * (denoise_pool.num_gpus or denoise_pool.num_cpus or 1.0)
    if not denoise_pool.num_gpus:  # on CPU, a denoiser actor runs its torch threads, at most one core each
        denoise_devices = min(denoise_devices, denoise_pool.min_size * (denoise_pool.torch_threads or 1))
    bound_rate = med("c", "steady_rows_per_s")
    memory = {}
    for run in runs:
        for kind, values in (run.get("memory") or {}).items():
            keep = memory.setdefault(kind, dict(values))
            for key in ("peak_rss_mb", "peak_uss_mb", "peak_gpu_mb"):
                if values.get(key) is not None:
                    keep[key] = max(keep.get(key) or 0, values[key])
    peer_rss = (memory.get("PeerPipelineWorker") or {}).get("peak_rss_mb")
    peer_uss = (memory.get("PeerPipelineWorker") or {}).get("peak_uss_mb")
    ratios = {
        "a_vs_b_wall_speedup": ar.speedup(med("b", "wall_seconds"), med("a", "wall_seconds")),
        "a_over_b_steady_rate": ar.ratio(med("a", "steady_rows_per_s"), med("b", "steady_rows_per_s")),
        "a_over_b_first_output": ar.ratio(med("a", "first_output_seconds"), med("b", "first_output_seconds")),
        "a_over_b_cpu_seconds_per_row": ar.ratio(med("a", "cpu_seconds_per_row"), med("b", "cpu_seconds_per_row")),
        "a_over_c_steady_rate": ar.ratio(med("a", "steady_rows_per_s"),
                                         bound_rate * denoise_devices if bound_rate else None),
        "a_over_c_steady_rate_one_denoiser": ar.ratio(med("a", "steady_rows_per_s"), bound_rate),
        "denoiser_devices": denoise_devices,
        "denoise_actor_over_peer_actor_peak_rss": ar.ratio(
            (memory.get("DenoiseWorker") or {}).get("peak_rss_mb"), peer_rss),
        "denoise_actor_over_peer_actor_peak_uss": ar.ratio(
            (memory.get("DenoiseWorker") or {}).get("peak_uss_mb"), peer_uss),
    }
    return {"contenders": contenders, "ratios": ratios, "memory": memory, "runs": runs, "stages": stages}


def machine_description() -> str:
    import platform

    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        load = ", load average %.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        load = ""
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}{load}")


def compare_markdown(report: dict[str, Any]) -> str:
    c = report["contenders"]
    names = {"a": "(a) latentmill, three pools", "b": "(b) peer: whole pipeline per actor",
             "c": "(c) bound: denoiser alone, in-process"}
    rows = []
    for key in ("a", "b", "c"):
        if key in c:
            rows.append([names[key], c[key]["runs"], c[key]["wall_seconds"], c[key]["first_output_seconds"],
                         c[key]["steady_rows_per_s"], c[key].get("cpu_seconds_per_row"),
                         c[key].get("steady_cpu_seconds_per_row")])
    lines = [f"Model `{report['model']}`, {report['rows']} prompts, {report['params']}, "
             f"denoiser batch {report['batch_size']}.", "",
             f"Machine: {report['machine']}", "",
             ar.markdown_table(["contender", "runs", "wall s (median)", "first output s", "steady rows/s",
                                "CPU s per row (all processes, whole run)", "CPU s per row (steady window)"],
                               rows), ""]
    r = report["ratios"]
    lines += [ar.markdown_table(["ratio", "value"], [
        ["a vs b: wall-time speedup (b wall / a wall)", r["a_vs_b_wall_speedup"]],
        ["a / b: steady rows/s", r["a_over_b_steady_rate"]],
        ["a / b: time to first output", r["a_over_b_first_output"]],
        ["a / b: CPU seconds per row (all processes)", r.get("a_over_b_cpu_seconds_per_row")],
        [f"a / c: steady rows/s vs bound x {fmt_devices(r['denoiser_devices'])} denoiser device(s)",
         r["a_over_c_steady_rate"]],
        ["a / c: steady rows/s vs one bound denoiser", r["a_over_c_steady_rate_one_denoiser"]],
        ["denoiser actor / peer actor: peak RSS", r["denoise_actor_over_peer_actor_peak_rss"]],
        ["denoiser actor / peer actor: peak USS", r["denoise_actor_over_peer_actor_peak_uss"]],
    ]), ""]
    run_rows = []
    for run in report["runs"]:
        cpu = run.get("cpu") or {}
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted((cpu.get("by_kind") or {}).items()) if v >= 0.5)
        run_rows.append([run["label"], run.get("wall_seconds"), run.get("first_output_seconds"),
                         run.get("steady_rows_per_s"), run.get("cpu_seconds_per_row"), cpu.get("worker_processes"),
                         kinds or "n/a", run.get("load_average_before"), run.get("load_average_after")])
    lines += [ar.markdown_table(["run", "wall s", "first output s", "steady rows/s", "CPU s/row",
                                 "Ray worker processes", "CPU s by process type", "load avg before",
                                 "load avg after"], run_rows), ""]
    busy_rows = []
    for run in report["runs"]:
        for pool, values in (run.get("pools") or {}).items():
            busy_rows.append([run["label"], pool, values.get("actors"), values.get("busy_fraction_run"),
                              values.get("busy_fraction_steady")])
    if busy_rows:
        lines += [ar.markdown_table(["run", "pool", "actors", "busy (whole run)", "busy (steady window)"], busy_rows), ""]
    mem_rows = [[kind, v.get("actors"), v.get("peak_rss_mb"), v.get("peak_uss_mb"), v.get("peak_gpu_mb")]
                for kind, v in report["memory"].items()]
    if mem_rows:
        lines += [ar.markdown_table(["actor type", "actors (last run)", "peak RSS MiB", "peak USS MiB", "peak GPU MiB"],
                                    mem_rows), ""]
    res = report["resources"]
    lines += [f"Resources: latentmill {res['latentmill']}; peer {res['peer']}.", ""]
    return "\n".join(lines)


def fmt_devices(value: float) -> str:
    return f"{value:g}"


def rederive(report: dict[str, Any]) -> dict[str, Any]:
    """Steady-state figures again from the recorded arrival curves (after a change of the estimator)."""
    for run in report["runs"]:
        if run.get("curve"):
            run["steady_rows_per_s"] = ar.steady_rate(ar.normalize_curve(run["curve"]))
    stages = report.get("stages") or {}
    from latentmill.config import PoolSettings

    denoise = PoolSettings(**(stages.get("denoise") or {}))
    fresh = summarize_compare(report["runs"], report["resources"]["latentmill"], report["resources"]["peer"],
                              denoise, stages)
    report.update(contenders=fresh["contenders"], ratios=fresh["ratios"], memory=fresh["memory"])
    return report
