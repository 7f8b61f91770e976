"""`latentmill bench scaling`: simulated denoiser devices, efficiency against the ideal.

For each profile and each device count N, the denoiser pool gets N whole (logical) GPUs and the other
two pools are sized by `latentmill.planning.size_for_denoisers` to keep up with them (in GPU fractions;
a simulated actor on a fraction f of a device runs f times as fast), on their simulated device time plus
the host time an actor spends around it (per batch: Ray's hand-off; per decoded row: media encoding and
the write, measured at start), with 15% headroom. The local Ray instance declares
enough logical GPUs for the plan. The stages sleep, so the only real CPU work is latentmill's and Ray's
own: moving real-sized tensors through the object store, scheduling, writing media and the manifest.

Efficiency = measured steady-state rows/s / (N x one device's rate), one device's rate being the
profile's denoiser batch / its batch time (exact: the simulated denoiser sleeps exactly that long).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from latentmill.bench import arithmetic as ar
from latentmill.bench.compare import machine_description, make_prompt_table, read_manifest
from latentmill.schema import STAGES

log = logging.getLogger(__name__)


def profile_costs(name: str, scale: float = 1.0):
    from latentmill.models.simulated import SIMULATED_PROFILES
    from latentmill.planning import StageCost

    profile = SIMULATED_PROFILES[name]
    return profile, {stage: StageCost(*cost) for stage, cost in profile.stage_costs(scale).items()}


def profile_row_bytes(name: str) -> dict[str, float]:
    """Bytes per row leaving each stage, as latentmill's workers store them (embeddings as float32)."""
    from latentmill.models.simulated import SIMULATED_PROFILES

    p = SIMULATED_PROFILES[name]
    tokens, width = p.embed_shape
    height, width_px = p.defaults["height"], p.defaults["width"]
    latent = p.latent_channels * (height // p.spatial_factor) * (width_px // p.spatial_factor)
    if p.is_video:
        latent *= (p.defaults["num_frames"] - 1) // p.temporal_factor + 1
    return {"encode": 2 * tokens * width * 4, "denoise": latent * 2, "decode": 0}


# Host-side time an actor spends per batch outside the simulated device (Ray task hand-off, block
# conversion, the worker's bookkeeping), measured on this machine as the gap between a lone simulated
# denoiser's batch time and its sleep (about 18 ms per batch, quiet machine); rounded up.
CALL_OVERHEAD_S = 0.025


def host_row_seconds(profile_name: str, time_scale: float = 1.0, size: int | None = None) -> dict[str, float]:
    """Host time per row that the decode actor adds to its simulated VAE (media encoding and the write),
    measured at the run's output size: `size` x `size`, or the profile's real size."""
    from latentmill.bench.device_compare import decode_host_seconds, simulated_model_name
    from latentmill.models import resolve_model

    family = resolve_model(simulated_model_name(f"builtin:sim-{profile_name}", time_scale)).family()
    params = {**family.generation_defaults(), **({"height": size, "width": size} if size else {})}
    return {"encode": 0.0, "denoise": 0.0,
            "decode": decode_host_seconds(family, params, "mp4" if family.is_video else "png")}


def point_plan(profile_name: str, devices: int, headroom: float = 0.15, time_scale: float = 1.0,
               host: dict[str, float] | None = None):
    """Denoisers fixed at `devices`; the other pools sized on device time plus host time per batch and row."""
    from latentmill.planning import StageCost, choose_batches, size_for_denoisers

    profile, costs = profile_costs(profile_name, time_scale)
    batches = choose_batches(costs, profile_row_bytes(profile_name), fixed={"denoise": profile.denoise_batch})
    host = host or {}
    sizing = {stage: StageCost(cost.t0 + CALL_OVERHEAD_S, cost.t1 + host.get(stage, 0.0)) for stage, cost in costs.items()}
    sizing["denoise"] = costs["denoise"]  # the denoisers are given, not sized
    return size_for_denoisers(sizing, batches, devices, headroom=headroom)


def scaling_point(profile_name: str, devices: int, batches_per_device: int, out: Path,
                  headroom: float = 0.15, time_scale: float = 1.0, host: dict[str, float] | None = None,
                  size: int | None = None) -> dict[str, Any]:
    from latentmill.bench.monitor import ProcessMonitor
    from latentmill.config import load_config
    from latentmill.pipelines.job import run_job

    profile, costs = profile_costs(profile_name, time_scale)
    model = f"builtin:sim-{profile_name}" + (f"@{time_scale:g}" if time_scale != 1.0 else "")
    plan = point_plan(profile_name, devices, headroom, time_scale, host)
    stages = plan.stages_section(cpus_per_actor=0.01)
    rows = devices * profile.denoise_batch * batches_per_device
    table = make_prompt_table(out / "inputs" / f"prompts-{rows}-{size or 'real'}.parquet", rows, size=size)
    output = out / "runs" / f"scaling-{profile_name}-{devices}"
    if output.exists():
        shutil.rmtree(output)
    actors = sum(pool.size for pool in plan.pools.values())
    config = load_config(None, {
        "input": {"uri": str(table)},
        "output": {"uri": str(output)},
        "model": {"path": model},
        "stages": stages,
        "ray": {"progress_bars": False, "local_num_gpus": math.ceil(plan.devices_used + 1e-9),
                "local_num_cpus": 4.0},
    })
    curve: list[tuple[float, int]] = []
    log.info("bench scaling: %s on %d denoiser device(s), %d rows, %d actors\n%s",
             profile_name, devices, rows, actors, plan.table())
    # Every pool is up before rows flow (Ray Data waits for each pool's actors in turn), so the
    # steady-state window is not confused with a backlog that piled up while actors were starting.
    import ray.data

    ray.data.DataContext.get_current().wait_for_min_actors_s = 900
    import os

    load_before = os.getloadavg()[0]
    with ProcessMonitor(uss=False, interval=0.5) as monitor:
        started = time.perf_counter()
        summary = run_job(config, on_progress=lambda s: curve.append((time.perf_counter() - started, s.outputs_written)))
        wall = time.perf_counter() - started
    expected = {"TextEncodeWorker": plan.pools["encode"].size, "DenoiseWorker": devices,
                "DecodeWorker": plan.pools["decode"].size}
    up = monitor.up_at(expected)
    batch_seconds = costs["denoise"].batch_seconds(profile.denoise_batch)
    one_device = profile.denoise_batch / batch_seconds
    norm = ar.normalize_curve(curve)
    window, rate = steady_state(norm, up, batch_seconds)
    cpu = monitor.cpu_summary()
    manifest = read_manifest(output)
    busy = {}
    if manifest is not None and window:
        for stage in STAGES:
            seconds = manifest.column(f"{stage}_seconds").to_pylist()
            pool = plan.pools[stage]
            busy[stage] = ar.busy_fraction(ar.busy_in_window(seconds, norm, window[0], window[1]),
                                           pool.size, window[1] - window[0])
    return {
        "profile": profile_name,
        "model": model,
        "time_scale": time_scale,
        "sizing_host_seconds": {"per_batch": CALL_OVERHEAD_S, "per_row": host or {}},
        "denoise_batch_seconds": batch_seconds,
        "devices": devices,
        "rows": rows,
        "rows_failed": summary.rows_failed,
        "actors": actors,
        "plan": plan.to_dict(),
        "stages": stages,
        "wall_seconds": wall,
        "first_output_seconds": ar.first_output_seconds(norm) if norm else None,
        "pools_up_seconds": up,
        "steady_window": list(window) if window else None,
        "steady_rows_per_s": rate,
        "one_device_rows_per_s": one_device,
        "ideal_rows_per_s": devices * one_device,
        "efficiency": ar.efficiency(rate, devices, one_device),
        "predicted_rows_per_s": plan.throughput_rows_s,
        "busy_fraction_steady": busy,
        "memory": monitor.summary(["TextEncodeWorker", "DenoiseWorker", "DecodeWorker"]),
        "driver_peak_rss_mb": monitor.driver_peak_rss / 2**20,
        "cpu": cpu,
        "cpu_seconds_per_row": ar.ratio(cpu["total"], rows),
        # The pipeline's own CPU cost per row in the steady state (the stages sleep): the cores it
        # needs per row/s. The monitor's clock started just before `started`.
        "steady_cpu_seconds_per_row": ar.ratio(monitor.cpu_between(window[0], window[1]), window[2]) if window else None,
        "steady_cpu_seconds_per_row_by_kind": {
            kind: seconds / window[2] for kind, seconds in monitor.cpu_between_by_kind(window[0], window[1]).items()
        } if window else None,
        "curve": norm,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def steady_state(curve: ar.Curve, pools_up: float | None, denoise_batch_seconds: float):
    """(window, rows/s) after every actor is up plus two denoiser batches, and past 25% of the rows."""
    not_before = (pools_up + 2 * denoise_batch_seconds) if pools_up is not None else None
    window = ar.steady_window(curve, lo=0.25, hi=0.9, not_before=not_before)
    rate = ar.steady_rate(curve, lo=0.25, hi=0.9, not_before=not_before) if window else None
    return window, rate


def run_scaling(args) -> dict[str, Any]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import ray

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    device_counts = [int(d) for d in args.devices.split(",") if d.strip()]
    # One local Ray instance for every point, with logical GPUs for the largest plan: starting Ray
    # again for each point costs time and, on a loaded machine, sometimes fails to start at all.
    host = {p: host_row_seconds(p, args.time_scale, args.size) for p in profiles}
    gpus = max(math.ceil(point_plan(p, d, time_scale=args.time_scale, host=host[p]).devices_used + 1e-9)
               for p in profiles for d in device_counts)
    ray.init(num_cpus=4, num_gpus=gpus, include_dashboard=False, log_to_driver=True)
    points = []
    try:
        for profile in profiles:
            for devices in device_counts:
                point = scaling_point(profile, devices, args.batches_per_device, out, time_scale=args.time_scale,
                                      host=host[profile], size=args.size)
                log.info("bench scaling: %s x%d: %.3g rows/s steady, efficiency %s", profile, devices,
                         point["steady_rows_per_s"] or 0, ar.fmt(point["efficiency"]))
                points.append(point)
                # Partial results survive an interrupted run.
                _write(out, points, args)
    finally:
        ray.shutdown()
    return _write(out, points, args)


def rederive(report: dict[str, Any]) -> dict[str, Any]:
    """Steady-state figures again from the recorded arrival curves (after a change of the estimator)."""
    for p in report["points"]:
        _, p["steady_rows_per_s"] = steady_state(ar.normalize_curve(p["curve"]), p.get("pools_up_seconds"),
                                                 p["denoise_batch_seconds"])
        p["efficiency"] = ar.efficiency(p["steady_rows_per_s"], p["devices"], p["one_device_rows_per_s"])
    report["linearity"] = _linearity(report["points"])
    return report


def _linearity(points: list[dict[str, Any]]) -> dict[str, dict[int, float | None]]:
    linear: dict[str, dict[int, float | None]] = {}
    for profile in {p["profile"] for p in points}:
        rates = {p["devices"]: p["steady_rows_per_s"] for p in points if p["profile"] == profile}
        linear[profile] = ar.linearity(rates)
    return linear


def _write(out: Path, points: list[dict[str, Any]], args) -> dict[str, Any]:
    report = {
        "command": f"latentmill bench scaling --profiles {args.profiles} --devices {args.devices} "
                   f"--batches-per-device {args.batches_per_device} --time-scale {args.time_scale:g}"
                   + (f" --size {args.size}" if args.size else ""),
        "machine": machine_description(),
        "points": points,
        "linearity": _linearity(points),
    }
    (out / "scaling.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "scaling.md").write_text(scaling_markdown(report))
    return report


def scaling_markdown(report: dict[str, Any]) -> str:
    rows = []
    for p in report["points"]:
        pools = p["plan"]["pools"]
        sizing = " / ".join(f"{pools[s]['size']}x{pools[s]['device_share']:g}" for s in STAGES)
        busy = p["busy_fraction_steady"]
        rows.append([
            p["profile"], p["devices"], sizing, p["rows"], p["pools_up_seconds"], p["first_output_seconds"],
            p["steady_rows_per_s"], p["ideal_rows_per_s"], p["efficiency"],
            report["linearity"].get(p["profile"], {}).get(p["devices"]),
            "/".join(ar.fmt(busy.get(s), 2) for s in STAGES) if busy else "n/a",
            (p["memory"].get("DenoiseWorker") or {}).get("peak_rss_mb"),
            p["driver_peak_rss_mb"],
            p.get("steady_cpu_seconds_per_row"),
            (p["steady_rows_per_s"] or 0) * (p.get("steady_cpu_seconds_per_row") or 0) or None,
            f"{p.get('load_average_before', 0):.1f}/{p.get('load_average_after', 0):.1f}",
        ])
    headers = ["profile", "denoiser devices", "pools enc/den/dec (actors x GPU)", "rows", "pools up s",
               "first output s", "steady rows/s", "ideal rows/s", "efficiency", "vs linear from 1",
               "busy enc/den/dec", "denoiser actor RSS MiB", "driver RSS MiB", "steady CPU s/row (all processes)",
               "CPU cores busy (steady)", "load avg before/after"]
    return "\n".join([f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", "",
                      ar.markdown_table(headers, rows), ""])
