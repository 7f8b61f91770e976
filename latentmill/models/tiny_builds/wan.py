"""Tiny Wan text-to-video checkpoints (WanPipeline): `builtin:tiny-video` (Wan 2.1) and
`builtin:tiny-wan22` (Wan 2.2 A14B layout: a high-noise and a low-noise expert)."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.tokenizers import train_t5_tokenizer


def build_tiny_video(dest: Path, experts: int = 1) -> None:
    """Write a tiny Wan 2.1 text-to-video checkpoint (WanPipeline) to `dest`.

    Same VAE compression as the real model (8x spatial, 4x temporal, 16 latent channels and
    its latents_mean/std) and a UMT5 text encoder; 9 frames of 64x64 by default. With two experts,
    Wan 2.2 A14B's layout: `transformer` below t = boundary_ratio x 1000 steps hands over to
    `transformer_2` (boundary_ratio 0.875, A14B's text-to-video value).
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
        torch.manual_seed(SEED)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        torch.manual_seed(SEED)
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    # The scheduler Wan 2.1 checkpoints ship with (flow_shift 3.0 is their 480p setting).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        num_train_timesteps=1000,
    )
    second = {}
    if experts == 2:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + 1)  # another expert: other weights, same shape
            second = {"transformer_2": WanTransformer3DModel.from_config(transformer.config), "boundary_ratio": 0.875}
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        **second,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


def build_tiny_wan22(dest: Path) -> None:
    build_tiny_video(dest, experts=2)


MODELS = {
    "tiny-video": (
        build_tiny_video,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 4, "guidance_scale": 5.0},
    ),
    "tiny-wan22": (
        build_tiny_wan22,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 4, "guidance_scale": 4.0,
         "guidance_scale_2": 3.0},
    ),
}
