"""`builtin:shapes`: the shapes model trained by `latentmill models train-shapes`, shipped in the package.

Unlike the other built-ins its weights are learnt, not random, so "building" it copies the shipped
checkpoint (see `latentmill/models/shapes/checkpoint/HOW_MADE.md`).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

CHECKPOINT = Path(__file__).parents[1] / "shapes" / "checkpoint"


def copy_shapes(dest: Path) -> None:
    shutil.copytree(CHECKPOINT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("HOW_MADE.md"))


@functools.cache
def checkpoint_digest() -> str:
    """A short hash of the shipped files, so a cached copy made from older weights is not reused."""
    digest = hashlib.sha256()
    for path in sorted(CHECKPOINT.rglob("*")):
        if path.is_file() and path.name != "HOW_MADE.md":
            digest.update(str(path.relative_to(CHECKPOINT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


MODELS = {
    "shapes": (copy_shapes, {"height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 5.0}),
}
