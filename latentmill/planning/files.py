"""Plan files: what `latentmill plan` writes and `latentmill run --plan` reads."""

from __future__ import annotations

from typing import Any

from latentmill.planning.optimise import Plan, PlanError
from latentmill.schema import DENOISE_2, STAGES

# A plan file may also size the second denoise pool of a two-expert model, by hand or from a plan for it.
PLAN_POOLS = (*STAGES, DENOISE_2)


def plan_document(plan: Plan, cpus_per_actor: float = 0.25, meta: dict[str, Any] | None = None,
                  decode_peak_memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """A plan file: a `stages:` section (what `latentmill run --plan` merges, with the decode's measured peak
    memory) plus the reasoning."""
    stages = plan.stages_section(cpus_per_actor)
    if decode_peak_memory is not None:
        stages["decode"]["peak_memory"] = decode_peak_memory
    return {"stages": stages, "plan": {**(meta or {}), **plan.to_dict()}}


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
    unknown = sorted(set(document["stages"]) - set(PLAN_POOLS))
    if unknown:
        raise PlanError(f"plan file {path}: unknown stage(s) {', '.join(unknown)}; expected {', '.join(PLAN_POOLS)}")
    return document["stages"]
