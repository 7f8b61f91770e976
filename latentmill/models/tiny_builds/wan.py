"""Tiny Wan text-to-video checkpoints (WanPipeline): `builtin:tiny-video` (Wan 2.1),
`builtin:tiny-wan22` (Wan 2.2 A14B layout: a high-noise and a low-noise expert) and
`builtin:tiny-wan22-5b` (Wan 2.2 TI2V-5B layout: per-token timesteps and the 16x-compression VAE)."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import t5_encoder_settings
from latentmill.models.tiny_builds.tokenizers import train_t5_tokenizer


def tiny_umt5(tokenizer):
    """A 2-layer, 32-wide UMT5 encoder for `tokenizer`; weights from the caller's seeded RNG."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**t5_encoder_settings(tokenizer)))


def tiny_wan_transformer(latent_channels: int):
    """A 2-layer Wan transformer (patch 1x2x2, as the real ones) over `latent_channels`."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=latent_channels,
        out_channels=latent_channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def build_tiny_video(dest: Path, experts: int = 1) -> None:
    """Write a tiny Wan 2.1 text-to-video checkpoint (WanPipeline) to `dest`.

    Same VAE compression as the real model (8x spatial, 4x temporal, 16 latent channels and
    its latents_mean/std) and a UMT5 text encoder; 9 frames of 64x64 by default. With two experts,
    Wan 2.2 A14B's layout: `transformer` below t = boundary_ratio x 1000 steps hands over to
    `transformer_2` (boundary_ratio 0.875, A14B's text-to-video value).
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    tokenizer = train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = tiny_umt5(tokenizer)
        torch.manual_seed(SEED)
        transformer = tiny_wan_transformer(16)
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


def build_tiny_wan22_5b(dest: Path) -> None:
    """Write a tiny Wan 2.2 TI2V-5B text-to-video checkpoint (WanPipeline with expand_timesteps) to `dest`.

    The real 5B's VAE layout: 48 latent channels, a 2x2 pixel patchify in front of three 2x
    downsamplings (16x spatial, 4x temporal compression), residual blocks, per-channel latents_mean/std
    (seeded values, not all 0 and 1, so a stage that skips the normalisation is caught); per-token
    timesteps in the transformer (`expand_timesteps`); its scheduler's flow_shift 5.0.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    tokenizer = train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = tiny_umt5(tokenizer)
        torch.manual_seed(SEED)
        transformer = tiny_wan_transformer(48)
        torch.manual_seed(SEED)
        latents_mean = [round(value, 4) for value in (torch.randn(48) * 0.5).tolist()]
        latents_std = [round(value, 4) for value in (0.5 + torch.rand(48) * 2).tolist()]
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=latents_mean,
            latents_std=latents_std,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, num_train_timesteps=1000
    )
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer, expand_timesteps=True)
    pipe.save_pretrained(dest, safe_serialization=True)


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
    "tiny-wan22-5b": (
        build_tiny_wan22_5b,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 4, "guidance_scale": 5.0},
    ),
}
