"""Tiny CogVideoX text-to-video checkpoint (CogVideoXPipeline): `builtin:tiny-cogvideox`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import t5_encoder_settings
from latentmill.models.tiny_builds.tokenizers import train_t5_tokenizer


def build_tiny_cogvideox(dest: Path) -> None:
    """Write a tiny CogVideoX 1.5 text-to-video checkpoint to `dest`.

    CogVideoX 1.5's layout: a transformer that patches 2 latent frames together (so the pipeline pads
    the latent frames to an even count and drops the padding after denoising), rotary positions, the
    per-step noise of CogVideoXDPMScheduler; the real VAE's compression (8x spatial, 4x temporal, 16
    latent channels, scaling factor 0.7) and a T5 v1.1 encoder, at a few thousand parameters each.
    """
    import torch
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    tokenizer = train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = T5EncoderModel(T5Config(**t5_encoder_settings(tokenizer)))
        torch.manual_seed(SEED)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,  # 3D rotary positions split a head in 4 + 6 + 6 (even) parts
            in_channels=16,
            out_channels=16,
            time_embed_dim=8,
            text_embed_dim=32,  # the T5's width
            num_layers=1,
            sample_width=8,  # latent 8 x 8: 64 x 64 pixels
            sample_height=8,
            sample_frames=17,
            patch_size=2,
            patch_size_t=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,  # the pipeline's prompt length
            use_rotary_positional_embeddings=True,
            patch_bias=False,
        )
        torch.manual_seed(SEED)
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=16,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            scaling_factor=0.7,
        )
    # CogVideoX 1.5's scheduler settings.
    scheduler = CogVideoXDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing",
    )
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                             transformer=transformer)
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-cogvideox": (
        build_tiny_cogvideox,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 4, "guidance_scale": 6.0},
    ),
}
