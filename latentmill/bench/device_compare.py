"""`latentmill bench compare --model builtin:sim-PROFILE --devices N[,M...]`: the split against the peer
pattern on simulated devices, at an equal budget of N devices.

- (a) latentmill: the planner's pools for N devices (`latentmill.planning.recommend_device_pools`):
  whole devices for the denoisers (with `--share-denoiser-devices`, shares down to half a device), the
  rest of the budget in fractions for encoding and decoding, sized on their device time plus the host
  time a decode actor spends per row (media encoding and the write, measured at the output size);
- (b) the peer: N actors with one whole device each, every one running the whole simulated pipeline
  (encode, denoise and decode at the profile's costs, then media encoding and the write) while it holds
  its device (`latentmill.bench.peer` on the family's `SimulatedPipeline`);
- (c) the bound: N devices' time over the sum of the stages' device seconds per row (at the plan's batch
  sizes): what N devices give if no device ever waits and host work is free.

Each contender's denoiser-device busy fraction is the simulated denoiser's seconds in the steady window
over the window x the devices that run denoisers. Costs per 1,000 outputs rent (a)'s denoiser devices at
the first price (a device holding a denoiser, when they share, is rented whole) and the rest of its
budget at the second; (b) rents all N at the first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from latentmill.bench import arithmetic as ar
from latentmill.bench.compare import machine_description, make_prompt_table, read_manifest
from latentmill.schema import STAGES

log = logging.getLogger(__name__)

# Logical CPUs of the local Ray: the actors ask 0.01 CPU each (their devices are simulated), so this only
# bounds the read and validation tasks.
RAY_CPUS = 4.0
CPUS_PER_ACTOR = 0.01


def simulated_model_name(model: str, time_scale: float) -> str:
    """`builtin:sim-sdxl-30` with `--time-scale 8` -> `builtin:sim-sdxl-30@8` (a name's own @ wins)."""
    if "@" in model or time_scale == 1.0:
        return model
    return f"{model}@{time_scale:g}"


def parameter_overrides(args) -> dict[str, Any]:
    """--height/--width/--steps/--guidance where given; the profile's defaults (its real output size)
    hold for the rest."""
    given = (("height", args.height), ("width", args.width), ("num_inference_steps", args.steps),
             ("guidance_scale", args.guidance))
    return {key: value for key, value in given if value is not None}


def decode_host_seconds(family, params: dict[str, Any], media_format: str) -> float:
    """Wall seconds per row a decode actor spends beyond its simulated VAE: copying the frames out,
    converting them, media encoding and the write (measured here at the run's output size)."""
    import tempfile

    import numpy as np

    from latentmill.io import media, storage
    from latentmill.rows import Request

    request = Request("probe", "a prompt", "", 1, int(params["num_inference_steps"]), float(params["guidance_scale"]),
                      int(params["height"]), int(params["width"]), int(params.get("num_frames") or 1),
                      float(params.get("fps") or 0.0))
    t0, t1 = family.stage_cost("decode")
    latents = np.zeros((1, *family.latent_shape(request)), dtype=np.float32)
    repeats = 2
    with tempfile.TemporaryDirectory() as folder:
        fs, root = storage.resolve(folder, {})
        started = time.perf_counter()
        for i in range(repeats):
            frames = media.to_uint8(family.decode(latents, [request]))[0]
            if family.is_video:
                data = media.encode_video(frames, float(params.get("fps") or 16.0), media_format)
            else:
                data = media.encode_image(frames[0], media_format)
            storage.put_bytes(fs, storage.join(root, f"probe-{i}"), data)
        elapsed = time.perf_counter() - started
    return max(0.0, elapsed / repeats - (t0 + t1) / family.speed)


def plan_for_devices(profile_name: str, time_scale: float, devices: int, host_decode: float,
                     share_denoisers: bool = False):
    """The planner's pools for `devices` whole devices (denoisers whole unless they may share, the rest in
    fractions), and each stage's device seconds per row for the bound."""
    from latentmill.bench.scaling import CALL_OVERHEAD_S, profile_costs, profile_row_bytes
    from latentmill.planning import Budget, StageCost, choose_batches, recommend_device_pools

    profile, costs = profile_costs(profile_name, time_scale)
    batches = choose_batches(costs, profile_row_bytes(profile_name), fixed={"denoise": profile.denoise_batch})
    sizing = {stage: StageCost(cost.t0 + CALL_OVERHEAD_S, cost.t1) for stage, cost in costs.items()}
    sizing["denoise"] = costs["denoise"]
    budget = Budget(devices=devices, kind="gpu", whole_denoise_devices=False if share_denoisers else None)
    plan = recommend_device_pools(sizing, batches, budget, {"decode": host_decode})
    # Each stage at the larger of the plan's batch and the peer's (the denoiser's): the cheaper per row,
    # so the bound is above both contenders.
    row_device_seconds = {stage: costs[stage].row_seconds(max(plan.pools[stage].batch_size, profile.denoise_batch))
                          for stage in STAGES}
    return plan, row_device_seconds


class MachineCpu:
    """Cores busy on the whole machine (every process, other users' too) between enter and exit."""

    def __enter__(self) -> "MachineCpu":
        import psutil

        self._start = (time.perf_counter(), psutil.cpu_times())
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        (t0, before), after = self._start, psutil.cpu_times()
        idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
        total = sum(after) - sum(before)
        self.cores_busy = (total - idle) / (time.perf_counter() - t0)


def _steady(curve: list[tuple[float, int]], monitor, pools_up: float | None, batch_seconds: float
            ) -> dict[str, Any]:
    from latentmill.bench.scaling import steady_state

    norm = ar.normalize_curve(curve)
    window, rate = steady_state(norm, pools_up, batch_seconds)
    return {
        "curve": norm,
        "rows": norm[-1][1] if norm else 0,
        "first_output_seconds": ar.first_output_seconds(norm) if norm else None,
        "pools_up_seconds": pools_up,
        "steady_window": list(window) if window else None,
        "steady_rows_per_s": rate,
        "run_cores_busy_steady": ar.ratio(monitor.cpu_between(window[0], window[1]), window[1] - window[0])
        if window else None,
        "steady_cpu_seconds_per_row_by_kind": {
            kind: seconds / window[2] for kind, seconds in monitor.cpu_between_by_kind(window[0], window[1]).items()
        } if window else None,
    }


def _denoiser_busy(row_seconds: list[float], result: dict[str, Any], devices: int) -> float | None:
    window = result["steady_window"]
    if not window:
        return None
    busy = ar.busy_in_window(row_seconds, result["curve"], window[0], window[1])
    return ar.busy_fraction(busy, devices, window[1] - window[0])


def run_split(model: str, table: Path, output: Path, overrides: dict[str, Any], plan, batch_seconds: float
              ) -> dict[str, Any]:
    """(a): latentmill's three pools as the plan sizes them."""
    from latentmill.bench.monitor import ProcessMonitor
    from latentmill.config import load_config
    from latentmill.pipelines.job import run_job
    from latentmill.planning import denoiser_devices

    config = load_config(None, {
        "input": {"uri": str(table)},
        "output": {"uri": str(output)},
        "model": {"path": model},
        "defaults": overrides,
        "stages": plan.stages_section(cpus_per_actor=CPUS_PER_ACTOR),
        "ray": {"progress_bars": False},
    })
    curve: list[tuple[float, int]] = []
    with MachineCpu() as machine, ProcessMonitor(uss=False, interval=0.5) as monitor:
        started = time.perf_counter()
        summary = run_job(config, on_progress=lambda s: curve.append((time.perf_counter() - started, s.outputs_written)))
        wall = time.perf_counter() - started
    pools_up = monitor.up_at({"TextEncodeWorker": plan.pools["encode"].size,
                              "DenoiseWorker": plan.pools["denoise"].size,
                              "DecodeWorker": plan.pools["decode"].size})
    result = _steady(curve, monitor, pools_up, batch_seconds)
    manifest = read_manifest(output)
    denoise_seconds = manifest.column("denoise_seconds").to_pylist() if manifest is not None else []
    result.update(contender="a", wall_seconds=wall, rows_failed=summary.rows_failed,
                  machine_cores_busy=machine.cores_busy,
                  denoiser_devices=denoiser_devices(plan),
                  denoiser_busy=_denoiser_busy(denoise_seconds, result, plan.pools["denoise"].size),
                  pools={stage: {"actors": pool.size, "device_share": pool.device_share, "batch_size": pool.batch_size}
                         for stage, pool in plan.pools.items()})
    return result


def run_whole_pipeline_peer(model_ref, table: Path, output: Path, params: dict[str, Any], devices: int,
                            batch_size: int, media_format: str, batch_seconds: float) -> dict[str, Any]:
    """(b): N actors, one whole device each, each running the whole pipeline and writing its media."""
    from latentmill.bench.monitor import ProcessMonitor
    from latentmill.bench.peer import peer_dataset

    curve: list[tuple[float, int]] = []
    denoise_seconds: list[float] = []
    with MachineCpu() as machine, ProcessMonitor(uss=False, interval=0.5) as monitor:
        started = time.perf_counter()
        ds = peer_dataset(str(table), model_ref, params, batch_size, devices, CPUS_PER_ACTOR, 1.0, 1,
                          str(output), 0, media_format)
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            done += len(batch["id"])
            denoise_seconds.extend(float(s) for s in batch["denoise_seconds"])
            curve.append((time.perf_counter() - started, done))
        wall = time.perf_counter() - started
    result = _steady(curve, monitor, monitor.up_at({"PeerPipelineWorker": devices}), batch_seconds)
    result.update(contender="b", wall_seconds=wall, machine_cores_busy=machine.cores_busy,
                  denoiser_devices=devices, denoiser_busy=_denoiser_busy(denoise_seconds, result, devices),
                  pools={"pipeline": {"actors": devices, "device_share": 1.0, "batch_size": batch_size}})
    return result


def device_compare_point(args, model: str, devices: int, prices: dict[str, float], out: Path,
                         peer_first: bool) -> dict[str, Any]:
    from latentmill.models import resolve_model

    model_ref = resolve_model(model)
    family = model_ref.family()
    profile = family.profile
    overrides = parameter_overrides(args)
    params = {**family.generation_defaults(), **overrides}
    media_format = "mp4" if family.is_video else "png"
    host_decode = decode_host_seconds(family, params, media_format)
    profile_name = family.spec["name"].removeprefix("sim-").split("@")[0]
    plan, row_device_seconds = plan_for_devices(profile_name, family.spec["time_scale"], devices, host_decode,
                                                args.share_denoiser_devices)
    batch_size = int(profile["denoise_batch"])
    t0, t1 = family.stage_cost("denoise")
    batch_seconds = t0 + batch_size * t1
    rows = devices * batch_size * args.batches_per_device
    table = make_prompt_table(out / "inputs" / f"prompts-{rows}.parquet", rows)
    log.info("bench compare: %s on %d devices, %d rows; latentmill's pools:\n%s", model, devices, rows, plan.table())

    def fresh(name: str) -> Path:
        folder = out / "runs" / f"{name}-{devices}"
        if folder.exists():
            shutil.rmtree(folder)
        return folder

    results: dict[str, dict[str, Any]] = {}
    for contender in (("b", "a") if peer_first else ("a", "b")):
        load_before = os.getloadavg()[0]
        if contender == "a":
            results["a"] = run_split(model, table, fresh("a"), overrides, plan, batch_seconds)
        else:
            results["b"] = run_whole_pipeline_peer(model_ref, table, fresh("b"), params, devices, batch_size,
                                                   media_format, batch_seconds)
        results[contender].update(load_average_before=load_before, load_average_after=os.getloadavg()[0])
    bound = ar.bound_rows_per_s(devices, row_device_seconds)
    # What (a)'s pools could give if host work were free: whole denoiser devices leave the rest of the
    # budget to encode and decode in whole-device steps, which the bound does not.
    pool_devices = {stage: pool.devices for stage, pool in plan.pools.items()}
    ceiling = ar.pools_rows_per_s(pool_devices, row_device_seconds)
    first, *rest = list(prices)
    cheap = rest[0] if rest else first
    rented = {"a": {first: results["a"]["denoiser_devices"]}, "b": {first: devices}}
    rented["a"][cheap] = rented["a"].get(cheap, 0) + devices - results["a"]["denoiser_devices"]
    for key, result in results.items():
        result["vs_bound"] = ar.ratio(result["steady_rows_per_s"], bound)
        result["devices_rented"] = rented[key]
        result["cost_per_1000"] = ar.cost_per_1000(result["steady_rows_per_s"], rented[key], prices)
    return {
        "profile": profile_name, "model": model, "devices": devices, "rows": rows, "params": params,
        "denoise_batch_seconds": batch_seconds, "decode_host_seconds_per_row": host_decode,
        "row_device_seconds": row_device_seconds, "bound_rows_per_s": bound, "plan": plan.to_dict(),
        "a_pools_rows_per_s": ceiling, "a_pools_over_bound": ar.ratio(ceiling, bound),
        "contenders": results,
        "a_over_b_rows_per_s": ar.ratio(results["a"]["steady_rows_per_s"], results["b"]["steady_rows_per_s"]),
        "b_over_a_cost": ar.ratio(results["b"]["cost_per_1000"], results["a"]["cost_per_1000"]),
    }


def run_device_compare(args) -> dict[str, Any]:
    import ray

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = simulated_model_name(args.model, args.time_scale)
    prices = ar.parse_prices(args.prices)
    device_counts = [int(d) for d in str(args.devices).split(",") if d.strip()]
    # One local Ray for every point, with a logical GPU per device of the largest budget.
    ray.init(address="local", num_cpus=RAY_CPUS, num_gpus=max(device_counts), include_dashboard=False,
             log_to_driver=True)
    ray.data.DataContext.get_current().wait_for_min_actors_s = 900
    ray.data.DataContext.get_current().enable_progress_bars = False
    points: list[dict[str, Any]] = []
    try:
        for i, devices in enumerate(device_counts):
            points.append(device_compare_point(args, model, devices, prices, out, peer_first=bool(i % 2)))
            _write(out, points, prices)  # partial results survive an interrupted run
    finally:
        ray.shutdown()
    return _write(out, points, prices)


def _write(out: Path, points: list[dict[str, Any]], prices: dict[str, float]) -> dict[str, Any]:
    import sys

    report = {
        "command": "latentmill " + " ".join(sys.argv[1:]),
        "machine": machine_description(),
        "prices_per_device_hour": prices,
        "points": points,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "compare.md").write_text(device_compare_markdown(report))
    return report


def device_compare_markdown(report: dict[str, Any]) -> str:
    names = {"a": "(a) latentmill", "b": "(b) peer", "c": "(c) bound"}
    rows = []
    for p in report["points"]:
        for key in ("a", "b"):
            r = p["contenders"][key]
            pools = " / ".join(f"{v['actors']}x{v['device_share']:g}" for v in r["pools"].values())
            rented = ", ".join(f"{count:g} {kind}" for kind, count in r["devices_rented"].items() if count)
            rows.append([p["profile"], p["devices"], names[key], pools, r["rows"], r["steady_rows_per_s"],
                         r["vs_bound"], r["denoiser_busy"], r["run_cores_busy_steady"], r["machine_cores_busy"],
                         rented, r["cost_per_1000"],
                         f"{r['load_average_before']:.1f}/{r['load_average_after']:.1f}"])
        rows.append([p["profile"], p["devices"], names["c"], "", "", p["bound_rows_per_s"], 1.0, "", "", "", "",
                     "", ""])
    ratios = [[p["profile"], p["devices"], p["a_over_b_rows_per_s"], p["b_over_a_cost"], p["a_pools_over_bound"]]
              for p in report["points"]]
    headers = ["profile", "devices", "contender", "pools (actors x device)", "rows", "outputs/s (steady)",
               "vs bound", "denoiser busy", "run CPU cores busy (steady)", "machine CPU cores busy (run)",
               "devices rented", "cost per 1,000", "load avg before/after"]
    prices = ", ".join(f"{kind} {price:g}/h" for kind, price in report["prices_per_device_hour"].items())
    return "\n".join([
        f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", "", f"Prices: {prices}", "",
        ar.markdown_table(headers, rows), "",
        ar.markdown_table(["profile", "devices", "a / b outputs/s", "b / a cost per 1,000",
                           "(a)'s pools on device time alone / bound"], ratios), ""])
