"""`latentmill plan`, `run --plan` and `run --auto-size`: calibrate, recommend, write or apply a plan."""

from __future__ import annotations

from typing import Any, Sequence

from latentmill.planning.budget import detect_budget
from latentmill.planning.calibrate import Calibration, calibrate
from latentmill.planning.files import plan_document, read_plan_stages, write_plan
from latentmill.planning.optimise import Budget, Plan, PlanError, choose_batches, recommend
from latentmill.schema import STAGES

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
        stages["decode"]["peak_memory"] = calibration.decode_peak_memory()
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
    memory = calibration.decode_memory
    print(f"  decode peak memory {memory['fixed_bytes'] / 2**20:.4g} MiB + {memory['bytes_per_latent_element']:.4g} "
          f"bytes per latent element ({memory['dtype']}, {memory['device']})")
    print(plan.table())
    if args.output:
        document = plan_document(
            plan,
            cpus_per_actor=args.cpus_per_actor,
            meta={"model": model, "hardware": calibration.hardware, "calibration": calibration.to_dict(),
                  "command": " ".join(sys.argv)},
            decode_peak_memory=calibration.decode_peak_memory(),
        )
        write_plan(args.output, document)
        print(f"plan written to {args.output}; run it with `latentmill run ... --plan {args.output}`")
    return 0
