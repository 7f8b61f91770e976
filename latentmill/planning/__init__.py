"""Stage sizing: calibrate each stage's cost, then choose pool sizes and batch sizes for a device budget.

- `optimise`: the cost model and the recommendation (pure: no Ray, no torch; unit-tested on fixed inputs);
- `calibrate`: each stage's cost measured by running the real stage workers in this process;
- `budget`: the devices a run can plan for;
- `files`: plan files;
- `commands`: `latentmill plan`, `run --plan` and `run --auto-size`.
"""

from latentmill.planning.budget import READ_RESERVE_CPUS, cpu_budget, detect_budget
from latentmill.planning.calibrate import Calibration, calibrate, describe_hardware
from latentmill.planning.commands import plan_command, plan_for_model, sized_config
from latentmill.planning.files import plan_document, read_plan_stages, write_plan
from latentmill.planning.optimise import (
    MAX_TASKS_PER_ACTOR_S,
    Budget,
    Plan,
    PlanError,
    PoolPlan,
    StageCost,
    choose_batch_size,
    choose_batches,
    denoiser_devices,
    fit_stage_cost,
    pool_for_share,
    recommend,
    recommend_device_pools,
    size_for_denoisers,
)

__all__ = [
    "MAX_TASKS_PER_ACTOR_S", "READ_RESERVE_CPUS", "Budget", "Calibration", "Plan", "PlanError", "PoolPlan",
    "StageCost", "calibrate", "choose_batch_size", "choose_batches", "cpu_budget", "denoiser_devices",
    "describe_hardware", "detect_budget", "fit_stage_cost", "plan_command", "plan_for_model", "plan_document",
    "pool_for_share", "read_plan_stages", "recommend", "recommend_device_pools", "size_for_denoisers",
    "sized_config", "write_plan",
]
