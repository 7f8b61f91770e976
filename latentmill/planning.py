"""Stage sizing: calibrate each stage's cost, then choose pool sizes and batch sizes for a device budget.

The model of a stage is the one the simulated devices use: a batch of ``b`` rows takes ``t0 + b * t1``
seconds on one whole device (``t0``: fixed per call, ``t1``: per row). At batch ``b`` a stage therefore
costs ``c = t0 / b + t1`` device-seconds per row, and a pool of ``n`` actors with a share ``f`` of a
device each (``num_gpus = f``, or ``num_cpus = f`` on a CPU budget) serves ``n * f / c`` rows per second:
an actor on a fraction of a device runs that much slower (time sharing, the conservative assumption).

The recommendation maximises the pipeline's throughput ``R`` subject to the budget:

* the denoiser pool is sized for ``R`` exactly (it is the expensive stage we want saturated), in whole
  devices on GPU budgets (a big denoiser does not share a device well), in fractions on CPU budgets;
* the text-encode and decode pools get ``headroom`` more capacity than ``R`` needs, so they never
  starve the denoiser, in device fractions on a grid (1/8 of a device by default);
* the largest feasible ``R`` is found by bisection (feasibility is monotone in ``R``).

Everything in this module except `calibrate` is pure (no Ray, no torch) and unit-tested on fixed inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from latentmill.schema import STAGES

DEFAULT_BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32)
EPS = 1e-9


class PlanError(ValueError):
    """A budget or a calibration that no plan can satisfy; the message says what to change."""


# ---- stage cost model --------------------------------------------------------------------------


@dataclass(frozen=True)
class StageCost:
    """A batch of b rows takes t0 + b * t1 seconds on one whole device."""

    t0: float
    t1: float

    def batch_seconds(self, batch: int) -> float:
        return self.t0 + batch * self.t1

    def row_seconds(self, batch: int) -> float:
        """Device-seconds per row at this batch size."""
        return self.t0 / batch + self.t1


def fit_stage_cost(samples: Iterable[tuple[int, float]]) -> StageCost:
    """Least-squares fit of seconds = t0 + batch * t1 to (batch, seconds) samples; t0, t1 >= 0.

    One distinct batch size cannot separate t0 from t1: all the time is then taken as per-row.
    """
    points = [(float(b), float(s)) for b, s in samples]
    if not points:
        raise PlanError("no calibration samples to fit")
    if any(b < 1 or s < 0 for b, s in points):
        raise PlanError("calibration samples need batch >= 1 and seconds >= 0")
    xs = [b for b, _ in points]
    if len(set(xs)) == 1:
        return StageCost(0.0, statistics.fmean(s / b for b, s in points))
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(s for _, s in points)
    sxx = sum((b - mean_x) ** 2 for b in xs)
    sxy = sum((b - mean_x) * (s - mean_y) for b, s in points)
    t1 = sxy / sxx
    t0 = mean_y - t1 * mean_x
    if t1 < 0:  # time does not grow with the batch: a fixed cost per call
        return StageCost(mean_y, 0.0)
    if t0 < 0:  # proportional through the origin
        return StageCost(0.0, sum(b * s for b, s in points) / sum(b * b for b in xs))
    return StageCost(t0, t1)


def choose_batch_size(
    cost: StageCost,
    candidates: Sequence[int] = DEFAULT_BATCH_CANDIDATES,
    max_batch: int | None = None,
    overhead_share: float = 0.02,
    call_overhead: float = 0.0,
    max_rows_by_memory: int | None = None,
) -> int:
    """The smallest candidate batch whose fixed cost is at most `overhead_share` of the batch's time.

    `call_overhead` is the framework's own cost per batch (Ray task dispatch, serialization), added
    to t0. Small batches keep latency and memory low; the fixed cost decides how small is affordable.
    Capped by `max_batch` and by `max_rows_by_memory` (rows whose output fits the block-size cap).
    """
    limit = min(max_batch or 10**9, max_rows_by_memory or 10**9)
    allowed = sorted(b for b in set(candidates) if 1 <= b <= limit) or [max(1, min(limit, min(candidates)))]
    fixed = cost.t0 + call_overhead
    for batch in allowed:
        total = fixed + batch * cost.t1
        if total <= 0 or fixed <= overhead_share * total + EPS:
            return batch
    return allowed[-1]


# ---- budget and plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What the pools may use: `devices` GPUs (kind "gpu") or CPU cores (kind "cpu")."""

    devices: float
    kind: str = "gpu"
    fraction_grid: float = 0.125  # the smallest share of a device an actor gets, and its step
    whole_denoise_devices: bool | None = None  # default: True for GPUs, False for CPUs
    headroom: float = 0.1  # spare capacity of the encode and decode pools over the plan's rate

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise PlanError(f"budget kind must be 'gpu' or 'cpu', got {self.kind!r}")
        if not self.devices > 0:
            raise PlanError(f"the budget needs > 0 devices, got {self.devices}")
        if not 0 < self.fraction_grid <= 1:
            raise PlanError(f"fraction grid must be in (0, 1], got {self.fraction_grid}")
        if self.headroom < 0:
            raise PlanError(f"headroom must be >= 0, got {self.headroom}")

    @property
    def whole_denoisers(self) -> bool:
        if self.whole_denoise_devices is not None:
            return self.whole_denoise_devices
        return self.kind == "gpu"


@dataclass(frozen=True)
class PoolPlan:
    stage: str
    size: int
    batch_size: int
    device_share: float  # per actor: num_gpus (GPU budget) or num_cpus (CPU budget)
    row_seconds: float  # device-seconds per row at batch_size on a whole device
    capacity_rows_s: float  # size * device_share / row_seconds
    busy_fraction: float  # predicted at the plan's throughput

    @property
    def devices(self) -> float:
        return self.size * self.device_share


@dataclass
class Plan:
    budget: Budget
    pools: dict[str, PoolPlan]
    throughput_rows_s: float
    bottleneck: str
    costs: dict[str, StageCost] = field(default_factory=dict)

    @property
    def devices_used(self) -> float:
        return sum(pool.devices for pool in self.pools.values())

    def stages_section(self, cpus_per_actor: float = 0.25) -> dict[str, dict[str, Any]]:
        """The `stages:` section of a job file (latentmill.config.StageSettings fields)."""
        section: dict[str, dict[str, Any]] = {}
        for stage in STAGES:
            pool = self.pools[stage]
            entry: dict[str, Any] = {"size": pool.size, "batch_size": pool.batch_size}
            if self.budget.kind == "gpu":
                entry["num_gpus"] = _clean(pool.device_share)
                entry["num_cpus"] = _clean(cpus_per_actor)
            else:
                entry["num_gpus"] = 0.0
                entry["num_cpus"] = _clean(pool.device_share)
                entry["torch_threads"] = max(1, math.ceil(pool.device_share - EPS))
            section[stage] = entry
        return section

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": asdict(self.budget),
            "throughput_rows_per_s": self.throughput_rows_s,
            "bottleneck": self.bottleneck,
            "devices_used": self.devices_used,
            "pools": {stage: {**asdict(pool), "devices": pool.devices} for stage, pool in self.pools.items()},
            "costs": {stage: asdict(cost) for stage, cost in self.costs.items()},
        }

    def table(self) -> str:
        unit = "GPU" if self.budget.kind == "gpu" else "CPU"
        header = f"{'stage':<8} {'actors':>6} {unit + '/actor':>10} {'batch':>5} {'s/row':>9} {'rows/s cap':>10} {'busy':>5}"
        lines = [header]
        for stage in STAGES:
            p = self.pools[stage]
            lines.append(
                f"{stage:<8} {p.size:>6} {p.device_share:>10.3g} {p.batch_size:>5} {p.row_seconds:>9.4g} "
                f"{p.capacity_rows_s:>10.4g} {p.busy_fraction:>5.0%}"
            )
        lines.append(
            f"predicted throughput {self.throughput_rows_s:.4g} rows/s, bottleneck {self.bottleneck}, "
            f"{self.devices_used:.4g} of {self.budget.devices:g} {unit}s"
        )
        return "\n".join(lines)


def _clean(value: float) -> float:
    return float(round(value, 6))


def pool_for_share(share: float, grid: float, whole: bool = False) -> tuple[int, float]:
    """(actors, device share per actor) that provide at least `share` devices of capacity.

    Fewest actors (each holds its own copy of the weights), each at most one device; the share per
    actor rounded up to the grid. `whole` gives every actor one whole device.
    """
    actors = max(1, math.ceil(share - EPS))
    if whole:
        return actors, 1.0
    per_actor = math.ceil(share / actors / grid - EPS) * grid
    return actors, min(1.0, max(grid, per_actor))


def _pools_for_rate(
    rate: float,
    row_seconds: dict[str, float],
    batches: dict[str, int],
    budget: Budget,
    whole_denoisers: bool,
    fixed_denoisers: int | None = None,
) -> dict[str, tuple[int, float]]:
    pools = {}
    for stage in STAGES:
        if stage == "denoise" and fixed_denoisers is not None:
            pools[stage] = (fixed_denoisers, 1.0)
            continue
        headroom = 0.0 if stage == "denoise" else budget.headroom
        share = rate * row_seconds[stage] * (1 + headroom)
        pools[stage] = pool_for_share(share, budget.fraction_grid, whole=whole_denoisers and stage == "denoise")
    return pools


# Ray Data keeps a couple of tasks in flight per actor and every task's completion goes through the
# driver's scheduling loop, so one actor completes at most a few tasks per second however cheap they
# are (measured: about 7.5/s for a 2 ms simulated text encoder on the 2-core development machine).
# Cheap stages therefore need batches large enough (or enough actors) to stay under this rate.
MAX_TASKS_PER_ACTOR_S = 4.0


def _fit_task_rate(
    pools: dict[str, tuple[int, float]],
    batches: dict[str, int],
    rate: float,
    max_batch: int,
    max_tasks_per_actor_s: float,
    grid: float,
    may_grow_share: bool,
) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
    """Grow encode/decode batches (by doubling, keeping them multiples of the denoiser's), then split
    their device share over more actors, until no actor needs more than `max_tasks_per_actor_s` tasks/s.

    Splitting rounds each actor's share up to the grid, so the pool's total share can grow; under a
    fixed budget (`may_grow_share` False) a pool is split only as far as its total share allows.
    """
    pools, batches = dict(pools), dict(batches)
    for stage in ("encode", "decode"):
        size, share = pools[stage]
        while rate / (batches[stage] * size) > max_tasks_per_actor_s and batches[stage] * 2 <= max_batch:
            batches[stage] *= 2
        needed = math.ceil(rate / (batches[stage] * max_tasks_per_actor_s) - EPS)
        total = size * share
        if not may_grow_share:
            needed = min(needed, math.floor(total / grid + EPS))
        if needed > size:
            if may_grow_share:
                per_actor = max(grid, math.ceil(total / needed / grid - EPS) * grid)
            else:
                per_actor = math.floor(total / needed / grid + EPS) * grid
            pools[stage] = (needed, min(1.0, per_actor))
    return pools, batches


def _finish(
    pools: dict[str, tuple[int, float]],
    row_seconds: dict[str, float],
    batches: dict[str, int],
    budget: Budget,
    costs: dict[str, StageCost],
) -> Plan:
    capacity = {
        stage: (size * share / row_seconds[stage]) if row_seconds[stage] > 0 else math.inf
        for stage, (size, share) in pools.items()
    }
    # The denoiser wins ties: it is the stage the plan means to saturate.
    bottleneck = min(STAGES, key=lambda s: (capacity[s], s != "denoise"))
    rate = capacity[bottleneck]
    plans = {}
    for stage in STAGES:
        size, share = pools[stage]
        busy = rate / capacity[stage] if math.isfinite(capacity[stage]) and capacity[stage] > 0 else 0.0
        plans[stage] = PoolPlan(
            stage=stage,
            size=size,
            batch_size=batches[stage],
            device_share=share,
            row_seconds=row_seconds[stage],
            capacity_rows_s=capacity[stage],
            busy_fraction=busy,
        )
    return Plan(budget=budget, pools=plans, throughput_rows_s=rate, bottleneck=bottleneck, costs=dict(costs))


def _check_costs(costs: dict[str, StageCost], batches: dict[str, int]) -> dict[str, float]:
    missing = [s for s in STAGES if s not in costs or s not in batches]
    if missing:
        raise PlanError(f"costs and batch sizes are needed for every stage; missing: {', '.join(missing)}")
    row_seconds = {stage: costs[stage].row_seconds(batches[stage]) for stage in STAGES}
    if row_seconds["denoise"] <= 0:
        raise PlanError("the denoiser's calibrated cost is zero; calibrate with a longer run")
    return row_seconds


def recommend(costs: dict[str, StageCost], batches: dict[str, int], budget: Budget,
              max_tasks_per_actor_s: float | None = MAX_TASKS_PER_ACTOR_S, max_batch: int = 32) -> Plan:
    """Pool sizes and device shares that maximise rows/s within the budget (see the module doc).

    With `max_tasks_per_actor_s`, the encode and decode batches (then actor counts) grow until no actor
    has to complete more tasks per second than that; None leaves the batches as given.
    """
    plan = _recommend(costs, batches, budget)
    if not max_tasks_per_actor_s:
        return plan
    pools = {stage: (pool.size, pool.device_share) for stage, pool in plan.pools.items()}
    fitted, grown = _fit_task_rate(pools, batches, plan.throughput_rows_s, max_batch, max_tasks_per_actor_s,
                                   budget.fraction_grid, may_grow_share=False)
    if fitted == pools and grown == batches:
        return plan
    return _finish(fitted, _check_costs(costs, grown), grown, budget, costs)


def _recommend(costs: dict[str, StageCost], batches: dict[str, int], budget: Budget) -> Plan:
    row_seconds = _check_costs(costs, batches)
    whole = budget.whole_denoisers
    minimum = {s: (1, 1.0 if (whole and s == "denoise") else budget.fraction_grid) for s in STAGES}
    if sum(n * f for n, f in minimum.values()) > budget.devices + EPS:
        if whole:  # a single device too small for a whole denoiser plus the others: share it
            return _recommend(costs, batches, Budget(**{**asdict(budget), "whole_denoise_devices": False}))
        raise PlanError(
            f"a budget of {budget.devices:g} {budget.kind.upper()}s cannot hold three pools at the minimum "
            f"share of {budget.fraction_grid:g}; lower --fraction-grid or raise the budget"
        )

    def used(rate: float) -> float:
        pools = _pools_for_rate(rate, row_seconds, batches, budget, whole)
        return sum(n * f for n, f in pools.values())

    need = row_seconds["denoise"] + (row_seconds["encode"] + row_seconds["decode"]) * (1 + budget.headroom)
    high = budget.devices / need  # the continuous optimum; quantisation can only lower it
    low = 0.0
    if used(high) <= budget.devices + EPS:
        low = high
    else:
        for _ in range(100):
            mid = (low + high) / 2
            if used(mid) <= budget.devices + EPS:
                low = mid
            else:
                high = mid
    rate = max(low, EPS)
    pools = _pools_for_rate(rate, row_seconds, batches, budget, whole)
    if sum(n * f for n, f in pools.values()) > budget.devices + EPS:
        pools = {s: minimum[s] for s in STAGES}
    pools = _spend_leftover(pools, row_seconds, budget, whole)
    return _finish(pools, row_seconds, batches, budget, costs)


def _spend_leftover(
    pools: dict[str, tuple[int, float]], row_seconds: dict[str, float], budget: Budget, whole: bool
) -> dict[str, tuple[int, float]]:
    """Give what quantisation left of the budget to the slowest pool, a grid step at a time."""
    pools = dict(pools)
    grid = budget.fraction_grid

    def capacity(stage: str, pool: tuple[int, float]) -> float:
        return pool[0] * pool[1] / row_seconds[stage] if row_seconds[stage] > 0 else math.inf

    while True:
        left = budget.devices - sum(n * f for n, f in pools.values())
        slowest = min(STAGES, key=lambda s: (capacity(s, pools[s]), s != "denoise"))
        size, share = pools[slowest]
        if whole and slowest == "denoise":
            grown = (size + 1, 1.0)
        else:
            grown = pool_for_share(size * share + grid, grid)
        extra = grown[0] * grown[1] - size * share
        if extra > left + EPS or capacity(slowest, grown) <= capacity(slowest, pools[slowest]):
            return pools
        pools[slowest] = grown


def size_for_denoisers(
    costs: dict[str, StageCost],
    batches: dict[str, int],
    denoisers: int,
    fraction_grid: float = 0.125,
    headroom: float = 0.1,
    kind: str = "gpu",
    max_tasks_per_actor_s: float | None = MAX_TASKS_PER_ACTOR_S,
    max_batch: int = 32,
) -> Plan:
    """`denoisers` whole devices for the denoiser, the other pools sized to keep up with them.

    The budget of the returned plan is what it uses; this is the scaling experiment's sizing.
    """
    if denoisers < 1:
        raise PlanError("at least one denoiser device is needed")
    row_seconds = _check_costs(costs, batches)
    rate = denoisers / row_seconds["denoise"]
    probe = Budget(devices=1e9, kind=kind, fraction_grid=fraction_grid, headroom=headroom)
    pools = _pools_for_rate(rate, row_seconds, batches, probe, True, fixed_denoisers=denoisers)
    if max_tasks_per_actor_s:
        pools, batches = _fit_task_rate(pools, batches, rate, max_batch, max_tasks_per_actor_s, fraction_grid,
                                        may_grow_share=True)
        row_seconds = _check_costs(costs, batches)
    budget = Budget(
        devices=sum(n * f for n, f in pools.values()),
        kind=kind,
        fraction_grid=fraction_grid,
        whole_denoise_devices=True,
        headroom=headroom,
    )
    return _finish(pools, row_seconds, batches, budget, costs)


def choose_batches(
    costs: dict[str, StageCost],
    row_bytes: dict[str, float] | None = None,
    candidates: Sequence[int] = DEFAULT_BATCH_CANDIDATES,
    max_batch: int | None = None,
    overhead_share: float = 0.02,
    call_overhead: float = 0.005,
    max_block_bytes: float = 256 * 2**20,
    fixed: dict[str, int] | None = None,
) -> dict[str, int]:
    """A batch size per stage (see `choose_batch_size`); `fixed` ones are kept as given.

    The denoiser's batch is chosen first and caps the others: Ray Data hands a downstream actor whole
    upstream blocks, so a text-encode batch larger than the denoiser's would give one denoiser actor
    several of its batches in one block, run one after another while other denoisers idle; and a
    decode batch larger than the denoiser's only waits for several denoiser blocks (later first output,
    bursty flow) to save a fixed cost that is small next to the denoiser's anyway.
    """
    batches: dict[str, int] = {}
    for stage in ("denoise", "encode", "decode"):
        if fixed and stage in fixed:
            batches[stage] = fixed[stage]
            continue
        per_row = (row_bytes or {}).get(stage) or 0
        by_memory = max(1, int(max_block_bytes // per_row)) if per_row > 0 else None
        limit, options = max_batch, tuple(candidates)
        if stage != "denoise":
            limit = min(max_batch or batches["denoise"], batches["denoise"])
            options += (batches["denoise"],)
        batches[stage] = choose_batch_size(costs[stage], options, limit, overhead_share, call_overhead, by_memory)
    return {stage: batches[stage] for stage in STAGES}


# ---- plan files --------------------------------------------------------------------------------


def plan_document(plan: Plan, cpus_per_actor: float = 0.25, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A plan file: a `stages:` section (what `latentmill run --plan` merges) plus the reasoning."""
    return {"stages": plan.stages_section(cpus_per_actor), "plan": {**(meta or {}), **plan.to_dict()}}


def write_plan(path, document: dict[str, Any]) -> None:
    import yaml
    from pathlib import Path

    header = (
        "# Written by `latentmill plan`. `latentmill run --plan FILE` merges the `stages:` section over the\n"
        "# job file's own stages (the plan wins for the fields it sets); `plan:` is the reasoning, not read.\n"
    )
    Path(path).write_text(header + yaml.safe_dump(document, sort_keys=False))


def read_plan_stages(path) -> dict[str, Any]:
    """The `stages:` section of a plan file, as a nested dict for load_config's overrides."""
    import yaml
    from pathlib import Path

    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"plan file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("stages"), dict):
        raise PlanError(f"plan file {path} has no `stages:` section; write one with `latentmill plan`")
    unknown = sorted(set(document["stages"]) - set(STAGES))
    if unknown:
        raise PlanError(f"plan file {path}: unknown stage(s) {', '.join(unknown)}; expected {', '.join(STAGES)}")
    return document["stages"]


# ---- calibration (runs the model in this process) ----------------------------------------------


@dataclass
class Calibration:
    model: str
    hardware: str
    samples: dict[str, list[tuple[int, float]]]
    costs: dict[str, StageCost]
    row_bytes: dict[str, float]
    load_seconds: dict[str, float]
    request: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "request": self.request,
            "samples": {stage: [list(s) for s in samples] for stage, samples in self.samples.items()},
            "costs": {stage: asdict(cost) for stage, cost in self.costs.items()},
            "row_bytes": self.row_bytes,
            "load_seconds": self.load_seconds,
        }


def calibrate(
    model_path: str,
    generation: dict[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4),
    repeats: int = 2,
    threads: int = 1,
    num_gpus: float = 0.0,
    dtype: str = "float32",
    storage_options: dict[str, Any] | None = None,
    media_format: str | None = None,
) -> Calibration:
    """Time every stage of the model in this process at each batch size; fit t0 and t1.

    `generation` holds GenerationDefaults fields (height, width, num_inference_steps, ...); the rest
    come from the model's defaults. The decode stage includes media encoding, as in the decode actor.
    A batch of 1 runs first, untimed, to warm up. Each stage is measured on one whole device (or
    `threads` CPU threads).
    """
    import time

    import numpy as np

    from latentmill.config import GenerationDefaults
    from latentmill.io import media
    from latentmill.models import resolve_model
    from latentmill.pipelines.validate import resolve_defaults
    from latentmill.rows import Request, request_from

    model = resolve_model(model_path, storage_options)
    family = model.family()
    values = resolve_defaults(GenerationDefaults(**(generation or {})), family.generation_defaults(),
                              family.extra_parameters)
    if not family.is_video:
        values["num_frames"], values["fps"] = 1, 0.0

    def requests(count: int) -> list[Request]:
        prompt = "a photo of a cat sitting on a red sofa in the living room"
        return [request_from({**values, "id": f"calibration-{i}", "prompt": prompt, "seed": i},
                             tuple(family.extra_parameters)) for i in range(count)]

    reason = family.check_request(requests(1)[0])
    if reason:
        raise PlanError(f"cannot calibrate {model_path}: {reason}")
    device, torch_dtype = family.prepare_runtime(num_gpus, dtype, threads)
    load_seconds = {}
    started = time.perf_counter()
    family.load_encoder(device, torch_dtype)
    load_seconds["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    family.load_denoiser(device, torch_dtype)
    load_seconds["denoise"] = time.perf_counter() - started
    started = time.perf_counter()
    family.load_decoder(device, torch_dtype)
    load_seconds["decode"] = time.perf_counter() - started
    image_format = media_format or ("mp4" if family.is_video else "png")

    def run(batch: int) -> tuple[dict[str, float], dict[str, float]]:
        rows = requests(batch)
        seconds, sizes = {}, {}
        t = time.perf_counter()
        encoded = family.encode(rows)
        seconds["encode"] = time.perf_counter() - t
        sizes["encode"] = sum(v.nbytes for rows in encoded.tensors.values() for v in rows if v is not None) / batch
        t = time.perf_counter()
        latents = family.denoise(rows, encoded.tensors)
        seconds["denoise"] = time.perf_counter() - t
        sizes["denoise"] = sum(np.asarray(v).nbytes for v in latents) / batch
        t = time.perf_counter()
        frames = media.to_uint8(family.decode(np.stack([np.asarray(v, dtype=np.float32) for v in latents]), rows))
        for row, row_frames in zip(rows, frames):
            if family.is_video:
                media.encode_video(row_frames, row.fps or 8.0, image_format)
            else:
                media.encode_image(row_frames[0], image_format)
        seconds["decode"] = time.perf_counter() - t
        sizes["decode"] = 0.0
        return seconds, sizes

    run(1)  # warm-up: first calls allocate and pick kernels
    samples: dict[str, list[tuple[int, float]]] = {stage: [] for stage in STAGES}
    row_bytes: dict[str, float] = {}
    for batch in sorted(set(batch_sizes)):
        timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for _ in range(max(1, repeats)):
            seconds, sizes = run(batch)
            row_bytes = sizes
            for stage in STAGES:
                timings[stage].append(seconds[stage])
        for stage in STAGES:
            samples[stage].append((batch, statistics.median(timings[stage])))
    costs = {stage: fit_stage_cost(samples[stage]) for stage in STAGES}
    return Calibration(
        model=model_path,
        hardware=describe_hardware(device, threads),
        samples=samples,
        costs=costs,
        row_bytes=row_bytes,
        load_seconds=load_seconds,
        request={k: values[k] for k in ("height", "width", "num_inference_steps", "guidance_scale", "num_frames")},
    )


def describe_hardware(device: Any, threads: int) -> str:
    import os
    import platform

    name = str(device)
    if name == "simulated":
        return "simulated devices (sleeping stages), " + f"{os.cpu_count()} CPU cores"
    if name.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)} ({name})"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {os.cpu_count()} cores, {threads} torch thread(s) per stage"


# Logical CPUs left to Ray Data's read and validation tasks on a CPU budget: pools that take every
# CPU leave the read task nothing, and the job deadlocks (see README.md, "Sizing the pools").
READ_RESERVE_CPUS = 1.0


def cpu_budget(physical_cores: float, logical_cpus: float) -> float:
    """CPU cores the pools may plan for: the physical cores, less what the read tasks must keep."""
    return max(0.5, min(physical_cores, logical_cpus - READ_RESERVE_CPUS))


def detect_budget(config, requested_gpus: float | None = None, requested_cpus: float | None = None) -> Budget:
    """The devices a run can use: given ones, else the cluster's GPUs, else its CPU cores."""
    import os

    if requested_gpus:
        return Budget(devices=requested_gpus, kind="gpu")
    if requested_cpus:
        return Budget(devices=requested_cpus, kind="cpu")
    cores = float(os.cpu_count() or 1)
    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        import ray

        from latentmill.pipelines.job import init_ray

        init_ray(config)
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            return Budget(devices=float(resources["GPU"]), kind="gpu")
        logical = float(resources.get("CPU", cores))
        return Budget(devices=cpu_budget(logical, logical), kind="cpu")
    if config.ray.local_num_gpus:
        return Budget(devices=float(config.ray.local_num_gpus), kind="gpu")
    gpus = _local_gpu_count()
    if gpus:
        return Budget(devices=float(gpus), kind="gpu")
    logical = float(config.ray.local_num_cpus or max(4.0, cores))  # what init_ray declares
    return Budget(devices=cpu_budget(cores, logical), kind="cpu")


def _local_gpu_count() -> int:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def plan_for_model(
    model_path: str,
    budget: Budget,
    generation: dict[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4),
    repeats: int = 2,
    max_batch: int | None = None,
    fixed_batches: dict[str, int] | None = None,
    call_overhead: float = 0.005,
    storage_options: dict[str, Any] | None = None,
) -> tuple[Plan, Calibration]:
    """Calibrate on this machine, then recommend (what `latentmill plan` and `run --auto-size` do)."""
    calibration = calibrate(
        model_path,
        generation,
        batch_sizes=batch_sizes,
        repeats=repeats,
        threads=1,
        num_gpus=1.0 if budget.kind == "gpu" else 0.0,
        storage_options=storage_options,
    )
    batches = choose_batches(
        calibration.costs, calibration.row_bytes, max_batch=max_batch, call_overhead=call_overhead, fixed=fixed_batches
    )
    return recommend(calibration.costs, batches, budget), calibration


# ---- command-line glue -------------------------------------------------------------------------


def _generation_from(config) -> dict[str, Any]:
    return {k: v for k, v in config.defaults.model_dump().items() if v is not None}


def sized_config(config, config_path, overrides: dict[str, Any], plan_path=None):
    """The job config with its stages taken from a plan file, or from a fresh calibration (--auto-size).

    Order: job file < plan (its `stages:` fields win) ; the run's flags never touch stages.
    """
    import logging

    from latentmill.config import load_config

    if plan_path:
        stages = read_plan_stages(plan_path)
    else:
        budget = detect_budget(config)
        plan, calibration = plan_for_model(
            config.model.path, budget, _generation_from(config), storage_options=config.storage.fsspec_options()
        )
        logging.getLogger(__name__).info(
            "auto-size on %s for %g %s(s):\n%s", calibration.hardware, budget.devices, budget.kind.upper(), plan.table()
        )
        stages = plan.stages_section()
    merged = dict(overrides)
    merged["stages"] = {
        stage: {**(overrides.get("stages", {}).get(stage, {})), **values} for stage, values in stages.items()
    }
    return load_config(config_path, merged)


def plan_command(args) -> int:
    """`latentmill plan`: calibrate, recommend, print, and write the plan file."""
    import sys

    from latentmill.config import ConfigError, load_config

    placeholders = {"input": {"uri": "unused-by-plan"}, "output": {"uri": "unused-by-plan"}}
    try:
        config = load_config(args.config, placeholders)
    except ConfigError as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return 1
    model = args.model or config.model.path
    generation = _generation_from(config)
    for key, value in (
        ("height", args.height),
        ("width", args.width),
        ("num_inference_steps", args.steps),
        ("guidance_scale", args.guidance),
        ("num_frames", args.num_frames),
    ):
        if value is not None:
            generation[key] = value
    try:
        batch_sizes = [int(part) for part in str(args.batch_sizes).split(",") if part.strip()]
        base = detect_budget(config, args.gpus, args.cpus)
        budget = Budget(
            devices=base.devices,
            kind=base.kind,
            fraction_grid=args.fraction_grid,
            whole_denoise_devices=False if args.share_denoiser_devices else None,
            headroom=args.headroom,
        )
        plan, calibration = plan_for_model(
            model,
            budget,
            generation,
            batch_sizes=batch_sizes,
            repeats=args.repeats,
            max_batch=args.max_batch,
            fixed_batches={"denoise": args.denoise_batch} if args.denoise_batch else None,
            storage_options=config.storage.fsspec_options(),
        )
    except (PlanError, ValueError) as exc:
        print(f"latentmill: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a model that cannot load: say so, no traceback
        from latentmill.models import ModelError

        if isinstance(exc, ModelError):
            print(f"latentmill: {exc}", file=sys.stderr)
            return 1
        raise
    print(f"calibrated {model} on {calibration.hardware} "
          f"({calibration.request['height']}x{calibration.request['width']}, "
          f"{calibration.request['num_inference_steps']} steps, {calibration.request['num_frames']} frame(s))")
    for stage in STAGES:
        cost = calibration.costs[stage]
        print(f"  {stage:<8} t0 {cost.t0 * 1000:9.2f} ms  t1 {cost.t1 * 1000:9.2f} ms/row  "
              f"(load {calibration.load_seconds[stage]:.2f} s)")
    print(plan.table())
    if args.output:
        document = plan_document(
            plan,
            cpus_per_actor=args.cpus_per_actor,
            meta={"model": model, "hardware": calibration.hardware, "calibration": calibration.to_dict(),
                  "command": " ".join(sys.argv)},
        )
        write_plan(args.output, document)
        print(f"plan written to {args.output}; run it with `latentmill run ... --plan {args.output}`")
    return 0
