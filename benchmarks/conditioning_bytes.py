"""Bytes per row that cross Ray's object store from the encode pool to the denoise pool, per built-in family.

Run: .venv/bin/python benchmarks/conditioning_bytes.py
Prints a Markdown table: a row whose guidance uses negatives, a row whose guidance does not, each with
the encoder at float32 and at bfloat16, next to what the earlier contract shipped (float32, negatives
always). Sizes are the packed column values (.npy bytes, header included) of the tiny checkpoints.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from latentmill.models import resolve_model, tensors, tiny
from latentmill.rows import Request

# The per-row parameters that switch each family's classifier-free guidance on and off.
GUIDED = {"tiny-flux": {"true_cfg_scale": 3.0}, "tiny-qwen-image": {"true_cfg_scale": 3.0},
          "tiny-z-image": {"guidance_scale": 3.0}}
UNGUIDED = {"tiny-flux": {"true_cfg_scale": 1.0}, "tiny-qwen-image": {"true_cfg_scale": 1.0},
            "tiny-z-image": {"guidance_scale": 0.0}}


def row_bytes(name: str, dtype: str) -> tuple[int, int, int]:
    family = resolve_model(f"builtin:{name}").family()
    device, torch_dtype = family.prepare_runtime(0, dtype, 1)
    family.load_encoder(device, torch_dtype)
    defaults = family.generation_defaults()
    extras = {key: defaults.get(key, value) for key, (_, value) in family.extra_parameters.items()}

    def request(overrides: dict) -> Request:
        row = {**defaults, **extras, **overrides}
        return Request("r", "a cat sitting on a red sofa in the living room", "blurry", 1, row["num_inference_steps"],
                       row["guidance_scale"], row["height"], row["width"], row.get("num_frames", 1), 0.0,
                       tuple(sorted((key, row[key]) for key in extras)))

    encoded = family.encode([request(GUIDED.get(name, {"guidance_scale": 5.0})),
                             request(UNGUIDED.get(name, {"guidance_scale": 1.0}))])
    guided, unguided = (sum(len(tensors.pack(values[i])) for values in encoded.tensors.values()) for i in (0, 1))
    always = sum(tensors.as_float32(values[0]).nbytes for values in encoded.tensors.values() if values[0] is not None)
    return guided, unguided, always


def main() -> None:
    torch.set_num_threads(1)
    print("| model | guided row, float32 | guided row, bfloat16 | unguided row, bfloat16 | earlier contract (float32, negatives always) |")
    print("|---|---|---|---|---|")
    for name in tiny.TINY_MODELS:
        guided32, _, always = row_bytes(name, "float32")
        guided16, unguided16, _ = row_bytes(name, "bfloat16")
        print(f"| {name} | {guided32:,} | {guided16:,} | {unguided16:,} | {always:,} |")


if __name__ == "__main__":
    main()
