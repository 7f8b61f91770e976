"""Peak memory per denoise actor of Wan 2.2 A14B in its two placements, and the weights at the real sizes.

Run: .venv/bin/python benchmarks/wan22_placement_memory.py [--model builtin:tiny-wan22] [--device cpu|cuda]
Prints, per placement ((a) both experts in each denoise actor; (b) one pool per expert), each actor's weights,
the peak of the tensors its denoising allocates on top (one row at the model's defaults, in this process, as
the actor runs it), and their sum; then the weights of the real A14B components from their published
architecture sizes (built on torch's meta device, no download), in bfloat16.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The real Wan 2.2 A14B components' architecture (each expert is a Wan 14B transformer; UMT5-XXL encoder).
A14B_EXPERT = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def module_bytes(modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def measure(model: str, device: str) -> list[tuple[str, int, int]]:
    """(actor, weight bytes, peak activation bytes) for each denoise actor of both placements."""
    from latentmill.actors.decode_memory import peak_memory
    from latentmill.config import GenerationDefaults
    from latentmill.models import resolve_model
    from latentmill.pipelines.validate import resolve_defaults
    from latentmill.rows import Request

    ref = resolve_model(model)
    encoder = ref.family()
    torch_device, dtype = encoder.prepare_runtime(1 if device == "cuda" else 0, "float32", 1)
    d = resolve_defaults(GenerationDefaults(), encoder.generation_defaults(), encoder.extra_parameters)
    request = Request("r0", "a river at dawn", "blurry", 1, d["num_inference_steps"], d["guidance_scale"],
                      d["height"], d["width"], d["num_frames"], d["fps"],
                      tuple(sorted((name, d[name]) for name in encoder.extra_parameters)))
    encoder.load_encoder(torch_device, dtype)
    conditioning = encoder.encode([request]).tensors
    rows = []
    both = ref.family()
    both.load_denoiser(torch_device, dtype)
    with peak_memory(torch_device) as peak:
        both.denoise([request], conditioning)
    rows.append(("(a) both experts", module_bytes(both.loaded_modules().values()), peak.bytes))
    del both
    high, low = ref.family(), ref.family()
    high.load_denoiser_expert(torch_device, dtype, 0)
    with peak_memory(torch_device) as peak:
        handover = high.denoise_first_expert([request], conditioning)
    rows.append(("(b) high-noise pool", module_bytes(high.loaded_modules().values()), peak.bytes))
    del high
    low.load_denoiser_expert(torch_device, dtype, 1)
    with peak_memory(torch_device) as peak:
        low.denoise_second_expert([request], conditioning, handover)
    rows.append(("(b) low-noise pool", module_bytes(low.loaded_modules().values()), peak.bytes))
    print(f"{model} on {device}, float32, one row {request.height}x{request.width}, {request.num_frames} frames, "
          f"{request.num_inference_steps} steps; handover {len(handover[0])} bytes per row")
    return rows


def real_sizes() -> None:
    import torch
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        expert = sum(p.numel() for p in WanTransformer3DModel(**A14B_EXPERT).parameters())
        text = sum(p.numel() for p in UMT5EncoderModel(UMT5Config(**UMT5_XXL)).parameters())
    gb = 2 / 1e9  # bfloat16 bytes per parameter, in GB
    print(f"A14B expert: {expert / 1e9:.2f} B parameters = {expert * gb:.1f} GB in bfloat16; both: "
          f"{2 * expert * gb:.1f} GB; UMT5-XXL encoder {text / 1e9:.2f} B = {text * gb:.1f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-wan22")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    mib = 2**20
    print(f"{'actor':<22} {'weights MiB':>12} {'activations MiB':>16} {'peak MiB':>10}")
    for actor, weights, activations in measure(args.model, args.device):
        print(f"{actor:<22} {weights / mib:>12.3f} {activations / mib:>16.3f} {(weights + activations) / mib:>10.3f}")
    real_sizes()


if __name__ == "__main__":
    main()
