"""Tiny LTX-Video text-to-video checkpoint (LTXPipeline): `builtin:tiny-ltx`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import t5_encoder_settings
from latentmill.models.tiny_builds.tokenizers import train_t5_tokenizer


def build_tiny_ltx(dest: Path) -> None:
    """Write a tiny LTX-Video 0.9.1 checkpoint to `dest`.

    The real VAE's compression (a 4x4 pixel patchify and three 2x space-time downsamplings: 32x spatial,
    8x temporal) and 0.9.1's decoder: timestep-conditioned (decode_timestep and decode noise), noise
    injected inside it, residual upsamplers; seeded latents_mean/std (not 0 and 1, so a skipped
    normalisation shows); a T5 v1.1 encoder and a one-layer LTX transformer over 8 latent channels (the
    real one has 128).
    """
    import torch
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    tokenizer = train_t5_tokenizer()
    latent_channels = 8
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = T5EncoderModel(T5Config(**t5_encoder_settings(tokenizer)))
        torch.manual_seed(SEED)
        transformer = LTXVideoTransformer3DModel(
            in_channels=latent_channels,
            out_channels=latent_channels,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=1,
            caption_channels=32,  # the T5's width
        )
        torch.manual_seed(SEED)
        vae = AutoencoderKLLTXVideo(
            latent_channels=latent_channels,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(True, True, True, False),
            upsample_residual=(True, True, True),
            upsample_factor=(2, 2, 2),
            patch_size=4,
            patch_size_t=1,
            timestep_conditioning=True,
            encoder_causal=True,
            decoder_causal=False,
        )
        with torch.no_grad():
            for name, parameter in vae.named_parameters():
                if "per_channel_scale" in name:  # zeros at initialisation: make the injected noise show
                    parameter.copy_(torch.rand_like(parameter) * 0.5)
        vae.latents_mean.copy_(torch.randn(latent_channels) * 0.5)
        vae.latents_std.copy_(0.5 + torch.rand(latent_channels) * 2)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift_terminal=0.1,
        use_dynamic_shifting=True,
    )  # LTX-Video's own scheduler settings
    pipe = LTXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-ltx": (
        build_tiny_ltx,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 25, "num_inference_steps": 4, "guidance_scale": 3.0},
    ),
}
