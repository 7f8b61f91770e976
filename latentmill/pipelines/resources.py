"""Do the pools fit the Ray cluster? Checked before they start, and watched while they wait.

Ray queues an actor it cannot place (a GPU on a CPU-only machine, a custom resource no node
advertises, more CPUs than the cluster has) without an error, and Ray Data holds back a task that
does not fit its budget without one either: such a job would wait forever. Two guards, one message
(what is asked, what the cluster has, what to change):

- before the pools start, `check_cluster` compares the pools' minimum demand (`min_size` actors of
  each pool, plus one CPU for the read/validate tasks) with the cluster's nodes, and with the node
  types an autoscaler may add where Ray publishes them;
- while the job runs, the `pending_watch` callback (run by Ray Data's executor at each scheduling
  step, checking every few seconds) stops the job when a pool has had no actor alive for
  `ray.pending_timeout_s` while Ray still cannot place one, or when nothing has moved for that long
  while nothing runs at all (a task held back for lack of resources).

A model that loads slowly is not "pending": its actor is placed (Ray no longer lists its shape as
unmet demand), so the watch keeps waiting.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from latentmill.config import JobConfig, PoolSettings

log = logging.getLogger(__name__)

# What one read/validate task asks for: Ray's default of one CPU (plan.build_dataset).
READ_TASK = {"CPU": 1.0}
# Resources Ray sets per node that no pool asks for.
_IGNORED = ("memory", "object_store_memory")
_EPSILON = 1e-6


try:  # Ray Data reports this kind as a self-explaining error: no "internal error" banner, no stack
    from ray.data.exceptions import ExecutionTimeoutError as _Stalled
except ImportError:  # pragma: no cover - a Ray without it
    _Stalled = Exception


class ResourcesPending(_Stalled):
    """The pools wait for resources the cluster does not give them; the message says what to change."""


@dataclass(frozen=True)
class PoolDemand:
    stage: str
    per_actor: dict[str, float]
    min_size: int
    max_size: int


def actor_shape(pool: PoolSettings) -> dict[str, float]:
    """What Ray reserves for one actor of the pool (the arguments plan.pool_args passes)."""
    shape = {"CPU": float(pool.num_cpus), "GPU": float(pool.num_gpus)}
    shape.update({name: float(amount) for name, amount in pool.resources.items()})
    return {name: amount for name, amount in shape.items() if amount > 0}


def pool_demands(config: JobConfig) -> list[PoolDemand]:
    """The pools the job starts: all three, or the decode pool alone for a decode job."""
    return [PoolDemand(stage, actor_shape(pool), pool.min_size, pool.max_size)
            for stage, pool in config.stages.items() if config.decode is None or stage == "decode"]


def minimum_demand(demands: list[PoolDemand]) -> dict[str, float]:
    """Every pool at its minimum size, plus one read/validate task."""
    total = dict(READ_TASK)
    for demand in demands:
        for name, amount in demand.per_actor.items():
            total[name] = total.get(name, 0.0) + amount * demand.min_size
    return total


def local_num_cpus(config: JobConfig) -> float:
    """Logical CPUs of a Ray that latentmill starts itself: the setting, else max(4, cores) and at
    least what the pools' minimum and a read task need, so the configured pools always fit."""
    if config.ray.local_num_cpus is not None:
        return config.ray.local_num_cpus
    needed = minimum_demand(pool_demands(config)).get("CPU", 0.0)
    return float(max(4, os.cpu_count() or 1, math.ceil(needed - _EPSILON)))


def fmt(resources: dict[str, float]) -> str:
    """`CPU 2, GPU 1, large_gpu 1`: the resources a pool or node has, without Ray's per-node labels."""
    shown = [f"{name} {amount:g}" for name, amount in sorted(resources.items(), key=_resource_order)
             if _shown(name) and amount > 0]
    return ", ".join(shown) or "nothing"


def _shown(name: str) -> bool:
    return name not in _IGNORED and not name.startswith("node:") and not name.startswith("accelerator_type:")


def _resource_order(item: tuple[str, float]) -> tuple[int, str]:
    return ({"CPU": 0, "GPU": 1}.get(item[0], 2), item[0])


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) + _EPSILON >= amount for name, amount in request.items())


@dataclass
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # -1: unlimited


@dataclass
class ClusterView:
    """The cluster as Ray reports it: each alive node's total resources, and what may be added."""

    nodes: list[dict[str, float]]
    node_types: list[NodeType] = field(default_factory=list)  # an autoscaler's node types, where Ray publishes them
    autoscaling_unknown: bool = False  # an autoscaler whose node types Ray does not publish
    local: bool = False  # a Ray that latentmill started itself

    def totals(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self.nodes:
            for name, amount in node.items():
                total[name] = total.get(name, 0.0) + amount
        return total

    def most(self) -> dict[str, float]:
        """The totals once the autoscaler has added every node it may (an upper bound)."""
        total = self.totals()
        for node_type in self.node_types:
            for name, amount in node_type.resources.items():
                added = math.inf if node_type.max_count < 0 else amount * node_type.max_count
                total[name] = total.get(name, 0.0) + added
        return total

    def describe(self) -> str:
        count = len(self.nodes)
        kinds: dict[str, int] = {}
        for node in self.nodes:
            kinds[fmt(node)] = kinds.get(fmt(node), 0) + 1
        nodes = "; ".join(f"{n} x [{shape}]" if n > 1 else f"[{shape}]" for shape, n in kinds.items())
        text = f"{fmt(self.totals())} on {count} node{'s' if count != 1 else ''}"
        if count > 1:
            text += f": {nodes}"
        if self.node_types:
            types = "; ".join(f"{t.name} [{fmt(t.resources)}] up to "
                              f"{'any number' if t.max_count < 0 else t.max_count}" for t in self.node_types)
            text += f"; the autoscaler may add: {types}"
        return text


def _advice(stage: str, missing: set[str], local: bool) -> str:
    tips = []
    if "GPU" in missing:
        tips.append(f"set stages.{stage}.num_gpus: 0 to run it on the CPU, or "
                    + ("run on a machine with a GPU (or declare one with ray.local_num_gpus)" if local
                       else "add GPU nodes to the cluster"))
    custom = sorted(name for name in missing if name not in ("CPU", "GPU"))
    if custom:
        names = ", ".join(custom)
        tips.append(f"remove {names} from stages.{stage}.resources, or "
                    + ("run on a cluster whose nodes advertise it (--ray-address); a local Ray has no custom "
                       "resources" if local else f"start nodes that advertise it (ray start --resources "
                       f"'{{\"{custom[0]}\": N}}')"))
    if "CPU" in missing:
        tips.append(f"lower stages.{stage}.num_cpus"
                    + (" or raise ray.local_num_cpus" if local else ", or add nodes with more CPUs"))
    return "; ".join(tips)


def _total_advice(short: list[str], demands: list[PoolDemand], local: bool) -> str:
    fields = {"CPU": "num_cpus", "GPU": "num_gpus"}
    asking = {name: [d.stage for d in demands if name in d.per_actor] for name in short}
    lower = "; ".join(f"{', '.join(stages)}: stages.<stage>.{fields.get(name, 'resources')}"
                      for name, stages in asking.items() if stages)
    more = []
    for name in short:
        if local and name == "CPU":
            more.append("raise ray.local_num_cpus")
        elif local and name == "GPU":
            more.append("run where Ray sees enough GPUs (ray.local_num_gpus)")
        elif local:
            more.append(f"run on a cluster with enough {name} (--ray-address)")
        else:
            more.append(f"add nodes with {name} (ray start --num-cpus / --num-gpus / --resources)")
    return (f"lower the pools' requests ({lower}) or their minimum size (stages.<stage>.size), or "
            + " and ".join(dict.fromkeys(more)))


def check_cluster(demands: list[PoolDemand], view: ClusterView, timeout_s: float) -> tuple[str | None, str | None]:
    """(error, warning): an error when the pools provably cannot start, a warning when they do not fit
    the nodes there are now but an autoscaler of unknown node types may add some."""
    shapes = view.nodes + [node_type.resources for node_type in view.node_types]
    problems: list[str] = []
    for demand in demands:
        if demand.min_size and not any(fits(demand.per_actor, shape) for shape in shapes):
            missing = {name for name, amount in demand.per_actor.items()
                       if not any(shape.get(name, 0.0) + _EPSILON >= amount for shape in shapes)}
            lacking = f"enough {', '.join(sorted(missing))}" if missing else "all of that on one node"
            problems.append(
                f"the {demand.stage} pool asks for [{fmt(demand.per_actor)}] per actor, but no node has "
                f"{lacking}. Fix: {_advice(demand.stage, missing or set(demand.per_actor), view.local)}"
            )
    if not problems:
        needed, most = minimum_demand(demands), view.most()
        short = sorted(name for name, amount in needed.items() if amount > most.get(name, 0.0) + _EPSILON)
        if short:
            parts = ", ".join(f"{d.stage} {d.min_size} x [{fmt(d.per_actor)}]" for d in demands)
            problems.append(
                f"the pools at their minimum size and one read/validate task need [{fmt(needed)}] "
                f"({parts}, plus [{fmt(READ_TASK)}] for reading and validating the prompts), more "
                f"{', '.join(short)} than the cluster has. Fix: {_total_advice(short, demands, view.local)}"
            )
    if not problems:
        return None, None
    text = (f"the actor pools do not fit this Ray cluster ({view.describe()}):\n  "
            + "\n  ".join(problems))
    if view.autoscaling_unknown:
        return None, (f"{text}\nThe cluster's autoscaler may add nodes that have it: waiting at most "
                      f"ray.pending_timeout_s ({timeout_s:g} s) for the pools to start")
    return text, None


def cluster_view(local: bool) -> ClusterView:
    """The connected cluster's nodes and, where Ray publishes them, its autoscaler's node types."""
    import ray

    nodes = [{name: float(amount) for name, amount in node["Resources"].items()}
             for node in ray.nodes() if node.get("Alive")]
    node_types = [] if local else _autoscaler_node_types()
    unknown = False if local or node_types else _autoscaler_without_types()
    return ClusterView(nodes=nodes, node_types=node_types, autoscaling_unknown=unknown, local=local)


def _autoscaler_node_types() -> list[NodeType]:
    """The node types of an autoscaler that publishes them to Ray (autoscaler v2)."""
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older or restricted GCS: no node types known
        return []
    if not config:
        return []
    return [NodeType(group.name, {k: float(v) for k, v in group.resources.items()}, int(group.max_count))
            for group in config.node_group_configs if group.resources and group.max_count != 0]


def _autoscaler_without_types() -> bool:
    """An autoscaler (v1, e.g. `ray up`) that manages named node types it does not publish.

    Every Ray head runs a monitor that reports its status to the GCS; without an autoscaling config
    it names each node `node_<id>`, with one it uses the config's node type names.
    """
    import json

    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:  # noqa: BLE001 - no status: no autoscaler we could know of
        return False
    names = set((report.get("node_type_mapping") or {}).values())
    names |= set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    return any(not re.fullmatch(r"node_[0-9a-f]+", str(name)) for name in names)


# ----------------------------------------------------------------------------------- while running


def pending_watch(demands: list[PoolDemand], timeout_s: float, worker_names: dict[str, str], local: bool):
    """A Ray Data ExecutionCallback class (Ray Data instantiates it without arguments) that raises
    ResourcesPending in the executor, which ends the dataset's iteration with that error."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class PendingWatch(ExecutionCallback):
        def __init__(self) -> None:
            self.watch = _Watch(demands, timeout_s, worker_names, local)

        def before_execution_starts(self, executor) -> None:
            self.watch.start(time.monotonic())

        def on_execution_step(self, executor) -> None:
            self.watch.step(executor, time.monotonic())

    return PendingWatch


class _Watch:
    def __init__(self, demands: list[PoolDemand], timeout_s: float, worker_names: dict[str, str],
                 local: bool) -> None:
        self.shapes = {d.stage: d.per_actor for d in demands}
        self.timeout_s = timeout_s
        self.worker_names = worker_names  # stage -> the worker class name in Ray Data's operator name
        self.local = local
        self.interval = min(5.0, max(0.2, timeout_s / 5))
        self.enabled = True
        self.start(time.monotonic())

    def start(self, now: float) -> None:
        self.next_check = now
        self.last_progress = now
        self.signature: Any = None
        self.down_since: dict[str, float | None] = {stage: now for stage in self.shapes}

    def step(self, executor, now: float) -> None:
        if not self.enabled or now < self.next_check:
            return
        self.next_check = now + self.interval
        try:
            message = self.check(executor, now)
        except Exception as exc:  # noqa: BLE001 - a watch that cannot read Ray Data's state must not stop the job
            self.enabled = False
            log.warning("the pending-resources watch is off for this run (%s: %s)", type(exc).__name__, exc)
            return
        if message:
            raise ResourcesPending(message)

    def _stage_of(self, op_name: str) -> str | None:
        for stage, worker in self.worker_names.items():
            if worker in op_name:
                return stage
        return None

    def check(self, executor, now: float) -> str | None:
        topology = executor._topology  # Ray Data 2.60: {operator: its state}, built before the first step
        if not topology:
            return None
        signature, pools, held_back, running = [], {}, [], 0
        for op, state in topology.items():
            metrics = op.metrics
            signature.append((metrics.num_outputs_taken, getattr(metrics, "num_tasks_finished", 0),
                              state.total_enqueued_input_blocks(), state.total_enqueued_output_blocks()))
            active = op.num_active_tasks()
            running += active
            stage = self._stage_of(op.name)
            if stage is None:
                if not op.has_completed() and active == 0 and not op.name.startswith("Input"):
                    held_back.append(op.name)
                continue
            info = op.get_actor_info()
            alive = info.running - info.restarting
            signature.append(alive)
            pools[stage] = (alive, info.pending)
            if alive > 0 or op.has_completed():
                self.down_since[stage] = None
            elif self.down_since.get(stage) is None:
                self.down_since[stage] = now
        if signature != self.signature:
            self.signature, self.last_progress = signature, now

        overdue = [stage for stage, since in self.down_since.items()
                   if since is not None and now - since >= self.timeout_s]
        stalled = now - self.last_progress >= self.timeout_s
        if not overdue and not stalled:
            return None
        demand = unmet_demand()  # one GCS call, only once something has waited past the timeout
        waiting = [stage for stage in overdue if demand is None or any(fits_exactly(self.shapes[stage], bundle)
                                                                       for bundle in demand)]
        loading = [stage for stage, (alive, pending) in pools.items()
                   if alive == 0 and pending > 0 and stage not in waiting
                   and demand is not None and not any(fits_exactly(self.shapes[stage], b) for b in demand)]
        if waiting:
            return self.message(waiting, [], now)
        if stalled and running == 0 and not loading:
            return self.message([], held_back, now)
        return None

    def message(self, waiting: list[str], held_back: list[str], now: float) -> str:
        import ray

        view = cluster_view(self.local)
        try:
            free = fmt(ray.available_resources())
        except Exception:  # noqa: BLE001
            free = "unknown"
        lines = []
        for stage in waiting:
            since = self.down_since[stage] or now
            lines.append(f"the {stage} pool has had no actor running for {now - since:.0f} s: Ray cannot place "
                         f"an actor that asks for [{fmt(self.shapes[stage])}]")
        if not waiting:
            what = ", ".join(held_back) if held_back else "the remaining tasks"
            lines.append(f"nothing has moved for {now - self.last_progress:.0f} s and nothing is running: "
                         f"{what} wait{'s' if len(held_back) == 1 else ''} for resources (a read/validate task "
                         f"needs [{fmt(READ_TASK)}] next to the pools' actors)")
        return (
            "job stopped: the actor pools are waiting for resources the Ray cluster does not give them:\n  "
            + "\n  ".join(lines)
            + f"\nThe cluster has {view.describe()}; free now: {free}."
            + "\nFix: lower the pools' requests (stages.<stage>.num_cpus, num_gpus, resources, size) or give the "
            "cluster what they ask for"
            + ("" if self.local else "; if an autoscaler is still adding nodes, raise ray.pending_timeout_s")
            + f" (now {self.timeout_s:g} s)."
        )


def fits_exactly(shape: dict[str, float], bundle: dict[str, float]) -> bool:
    """Whether a bundle of Ray's unmet demand is an actor of this shape."""
    names = {name for name in (*shape, *bundle) if _shown(name)}
    return bool(names) and all(abs(shape.get(name, 0.0) - bundle.get(name, 0.0)) < _EPSILON for name in names)


def unmet_demand() -> list[dict[str, float]] | None:
    """The task and actor shapes Ray cannot place right now (waiting or infeasible); None if unknown."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        return [dict(request.bundle) for demand in status.resource_demands.ray_task_actor_demand
                for request in demand.bundles_by_count if request.count > 0]
    except Exception as exc:  # noqa: BLE001 - fall back to "no actor alive for the whole timeout"
        log.debug("could not read Ray's unmet resource demand: %s", exc)
        return None
