"""The largest pixel difference between latentmill's stages and the plain diffusers pipeline, per family.

    python benchmarks/family_parity.py [--families tiny-ltx2,tiny-wan22]

Each built-in tiny family runs the four rows of `tests/models/test_stage_contract.py` (mixed per-row
parameters, one row without guidance) through encode, denoise and decode in separate family objects holding
only their stage's weights, tensors packed between stages as the object store carries them, rows that can
share a model call in one. Printed per family: the largest difference from the plain pipeline (in 1/255 of
full scale, before 8-bit rounding; the test compares the 8-bit media the workers write) for the batch and
for one row alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from latentmill.models import resolve_model, tiny
    from latentmill.rows import request_at
    from tests.helpers import validated_rows
    from tests.models.test_stage_contract import FAMILY_EXTRAS, rows_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(sorted(FAMILY_EXTRAS)))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| family | rows | largest difference, batch of 4 (/255) | one row alone vs in the batch (/255) |")
    print("|---|---|---|---|")
    for name in args.families.split(","):
        if name not in tiny.TINY_MODELS:
            continue
        ref = resolve_model(f"builtin:{name}")
        family = ref.family()
        batch = validated_rows(family, rows_for(name))
        requests = [request_at(batch, i, tuple(family.extra_parameters)) for i in range(len(batch["id"]))]
        frames = run_stages(ref, requests)
        pipe = family.reference_pipeline()
        pipe.set_progress_bar_config(disable=True)
        batch = max(float(np.abs(got - family.reference_generate(pipe, request)).max())
                    for request, got in zip(requests, frames))
        alone = run_stages(ref, [requests[1]])
        print(f"| {name} | {len(requests)} | {batch * 255:.2g} | {float(np.abs(alone[0] - frames[1]).max()) * 255:.2g} |",
              flush=True)
    return 0


def run_stages(ref, requests) -> list[np.ndarray]:
    """Float frames of `requests`: each stage in its own family object, conditioning packed and unpacked
    between them, the rows of one denoise group in one call, each row decoded alone."""
    from latentmill.models import tensors
    from tests.helpers import denoise_groups, loaded_stage_families

    encoder, denoiser, decoder = loaded_stage_families(ref)
    encoded = encoder.encode(requests)
    latents: list = [None] * len(requests)
    for rows in denoise_groups(denoiser, requests):
        conditioning = {name: [tensors.unpack(tensors.pack(values[i])) for i in rows]
                        for name, values in encoded.tensors.items()}
        for i, value in zip(rows, denoiser.denoise([requests[i] for i in rows], conditioning)):
            latents[i] = value["latents"] if isinstance(value, dict) else value
    return [decoder.decode(value[None], [request])[0] for value, request in zip(latents, requests)]


if __name__ == "__main__":
    sys.exit(main())
