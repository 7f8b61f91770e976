"""Fault injection for drills and tests, switched on by an environment variable.

    LATENTMILL_FAULTS="decode:oom:2;denoise:raise:row-7;denoise:nan:row-9;denoise:sleep:1.5"

- `STAGE:oom:N`     the first N model calls of the stage in each actor raise an out-of-memory error
- `STAGE:raise:ID`  any call that includes row ID raises (one bad row among good ones)
- `STAGE:nan:ID`    row ID's result is NaN (denoise: latents) on its first attempt
- `STAGE:blank:ID`  row ID's decoded frames are blank (decode) on its first attempt
- `STAGE:sleep:S`   every call sleeps S seconds first (slow a run down to kill things mid-run)

The driver forwards the variable to the stage actors. Unset, this module does nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from latentmill.schema import STAGES

ENV = "LATENTMILL_FAULTS"


@dataclass(frozen=True)
class Fault:
    stage: str
    kind: str
    arg: str


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        stage, kind, arg = (item.split(":", 2) + ["", ""])[:3]
        if stage not in STAGES:
            raise ValueError(f"{ENV}: unknown stage in {item!r} (stages: {', '.join(STAGES)})")
        if kind not in {"oom", "raise", "nan", "blank", "sleep"}:
            raise ValueError(f"{ENV}: unknown fault {item!r} (kinds: oom, raise, nan, blank, sleep)")
        if kind in {"raise", "nan", "blank"} and not arg:
            raise ValueError(f"{ENV}: {item!r} needs a row id ({stage}:{kind}:ID)")
        try:
            if kind == "sleep" and float(arg) < 0 or kind == "oom" and int(arg or 1) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{ENV}: {item!r} needs a number >= 0 after {kind}:") from None
        faults.append(Fault(stage, kind, arg))
    return faults


class FaultInjector:
    def __init__(self, stage: str) -> None:
        self.faults = [f for f in parse(os.environ.get(ENV, "")) if f.stage == stage]
        self.ooms_raised = 0

    def before_call(self, ids: list[str]) -> None:
        """Before a stage processes rows `ids`: sleep and per-row faults."""
        for fault in self.faults:
            if fault.kind == "sleep":
                time.sleep(float(fault.arg))
            elif fault.kind == "raise" and fault.arg in ids:
                raise RuntimeError(f"injected fault for row {fault.arg!r}")

    def model_call(self) -> None:
        """Right before a model call: the injected out-of-memory errors, raised where a real one is."""
        for fault in self.faults:
            if fault.kind == "oom" and self.ooms_raised < int(fault.arg or 1):
                import torch

                self.ooms_raised += 1
                raise torch.OutOfMemoryError("injected out-of-memory error")

    def poisoned(self, row_id: str, kind: str = "nan") -> bool:
        """Whether row `row_id`'s result is to be corrupted (`nan` latents, `blank` frames)."""
        return any(f.kind == kind and f.arg == row_id for f in self.faults)


def forwarded_env() -> dict[str, str]:
    """Environment for the stage actors' runtime_env."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
