"""The cost model of a stage and the recommendation of pools for a device budget.

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

Everything here is pure (no Ray, no torch) and unit-tested on fixed inputs.
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
    if not fits_devices(fitted.values(), budget):  # smaller shares that no longer pack: keep the actors
        fitted = pools
    if fitted == pools and grown == batches:
        return plan
    return _finish(fitted, _check_costs(costs, grown), grown, budget, costs)


def fits_devices(pools: Iterable[tuple[int, float]], budget: Budget) -> bool:
    """Whether the pools' actors can be placed: on a GPU budget each fractional actor needs its share of
    one device (Ray does not split an actor over devices), so nine actors of 0.875 do not fit on eight
    GPUs although 7.875 <= 8. First-fit decreasing over the budget's devices; CPU shares simply add up."""
    shares = sorted((share for size, share in pools for _ in range(size)), reverse=True)
    if budget.kind != "gpu":
        return sum(shares) <= budget.devices + EPS
    whole = math.floor(budget.devices + EPS)
    free = [1.0] * whole + ([budget.devices - whole] if budget.devices - whole > EPS else [])
    for share in shares:
        device = next((i for i, left in enumerate(free) if left >= share - EPS), None)
        if device is None:
            return False
        free[device] -= share
    return True


def _recommend(costs: dict[str, StageCost], batches: dict[str, int], budget: Budget) -> Plan:
    row_seconds = _check_costs(costs, batches)
    whole = budget.whole_denoisers
    minimum = {s: (1, 1.0 if (whole and s == "denoise") else budget.fraction_grid) for s in STAGES}
    if not fits_devices(minimum.values(), budget):
        if whole:  # a single device too small for a whole denoiser plus the others: share it
            return _recommend(costs, batches, Budget(**{**asdict(budget), "whole_denoise_devices": False}))
        raise PlanError(
            f"a budget of {budget.devices:g} {budget.kind.upper()}s cannot hold three pools at the minimum "
            f"share of {budget.fraction_grid:g}; lower --fraction-grid or raise the budget"
        )

    def fits(rate: float) -> bool:
        return fits_devices(_pools_for_rate(rate, row_seconds, batches, budget, whole).values(), budget)

    need = row_seconds["denoise"] + (row_seconds["encode"] + row_seconds["decode"]) * (1 + budget.headroom)
    high = budget.devices / need  # the continuous optimum; quantisation can only lower it
    low = 0.0
    if fits(high):
        low = high
    else:
        for _ in range(100):
            mid = (low + high) / 2
            if fits(mid):
                low = mid
            else:
                high = mid
    rate = max(low, EPS)
    pools = _pools_for_rate(rate, row_seconds, batches, budget, whole)
    if not fits_devices(pools.values(), budget):
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
        slowest = min(STAGES, key=lambda s: (capacity(s, pools[s]), s != "denoise"))
        size, share = pools[slowest]
        if whole and slowest == "denoise":
            grown = (size + 1, 1.0)
        else:
            grown = pool_for_share(size * share + grid, grid)
        if (not fits_devices({**pools, slowest: grown}.values(), budget)
                or capacity(slowest, grown) <= capacity(slowest, pools[slowest])):
            return pools
        pools[slowest] = grown


def recommend_device_pools(costs: dict[str, StageCost], batches: dict[str, int], budget: Budget,
                           host_seconds: dict[str, float] | None = None) -> Plan:
    """The best plan for a budget of devices, found by trying every denoiser pool: whole devices, or on
    a budget that lets denoisers share (`whole_denoise_devices=False`) every share on the grid down to
    half a device too, never more denoisers than devices: a device holds at most two copies of the
    denoiser's weights, and otherwise shares with the VAE and the text encoder.

    `recommend` sizes every pool for one common rate and rounds each up, which can strand part of a
    device, and knows nothing of the decoders' host work. Here each denoiser pool (k actors of share s) gets
    the rest of the budget: the encoders the smallest share that keeps up with it, the decoders all that
    is left, in as many actors (up to 2k + 1) as decode the most, every share one that packs
    (`packable_shares`); a plan whose actors cannot all be placed (`fits_devices`) is not considered.
    While one small decoder encodes media on the host the others keep the device busy, so its
    `host_seconds` per row idle only its share of a device and are charged at that share. Whole devices
    are tried first and kept unless a shared plan gives more rows/s.
    """
    row_seconds = _check_costs(costs, batches)
    host = host_seconds or {}
    grid = budget.fraction_grid
    shares = [1.0] if budget.whole_denoisers else [
        _clean(1.0 - step * grid) for step in range(math.floor(0.5 / grid + EPS) + 1)]
    best: Plan | None = None
    for share in shares:
        for denoisers in range(1, math.floor(budget.devices + EPS) + 1):
            rate = denoisers * share / row_seconds["denoise"]
            encoders = _packable_pool(pool_for_share(rate * (row_seconds["encode"] + grid * host.get("encode", 0.0)),
                                                     grid), grid)
            left = budget.devices - denoisers * share - encoders[0] * encoders[1]
            decode_devices = math.floor(left / grid + EPS) * grid
            if decode_devices < grid - EPS:
                break
            decoders = _decoders_for(decode_devices, row_seconds["decode"], host.get("decode", 0.0), grid,
                                     max_actors=2 * denoisers + 1)
            pools = {"encode": encoders, "denoise": (denoisers, share), "decode": decoders}
            if not fits_devices(pools.values(), budget):
                continue
            charged = dict(row_seconds)
            charged["encode"] += encoders[1] * host.get("encode", 0.0)
            charged["decode"] += decoders[1] * host.get("decode", 0.0)
            plan = _finish(pools, charged, batches, budget, costs)
            if best is None or plan.throughput_rows_s > best.throughput_rows_s * (1 + EPS):
                best = plan
    if best is None:
        denoiser = "a whole denoiser device" if budget.whole_denoisers else "a denoiser"
        raise PlanError(f"a budget of {budget.devices:g} devices cannot hold {denoiser} and the other pools at "
                        f"the minimum share of {grid:g}")
    return best


def denoiser_devices(plan: Plan) -> int:
    """The devices that hold a denoiser when the denoisers are placed first, as many to a device as fit."""
    pool = plan.pools["denoise"]
    return math.ceil(pool.size / math.floor(1 / pool.device_share + EPS))


def packable_shares(grid: float) -> list[float]:
    """Device shares that pack without waste: 1, 1/2, 1/4, ... down to the grid.

    Ray gives a fractional actor its share of one device, so two actors of 0.625 need two devices;
    shares that divide one device fill every device they use.
    """
    shares = [1.0]
    while shares[-1] / 2 >= grid - EPS:
        shares.append(shares[-1] / 2)
    return shares


def _packable_pool(pool: tuple[int, float], grid: float) -> tuple[int, float]:
    """The same actors with their share rounded up to a packable one."""
    actors, share = pool
    return actors, min(s for s in packable_shares(grid) if s >= share - EPS)


def _decoders_for(devices: float, row_seconds: float, host_seconds: float, grid: float, max_actors: int
                  ) -> tuple[int, float]:
    """(actors, packable share each) of at most `devices` that decode the most rows/s, each actor's host
    seconds per row charged at its share; fewer actors on a tie (each is a process with its own weights)."""
    best, best_rate = (1, grid), -1.0
    for share in packable_shares(grid):
        actors = min(max_actors, math.floor(devices / share + EPS))
        if actors < 1:
            continue
        rate = actors * share / (row_seconds + share * host_seconds)
        if rate > best_rate * (1 + EPS):
            best, best_rate = (actors, share), rate
    return best


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
