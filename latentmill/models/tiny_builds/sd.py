"""Tiny Stable Diffusion 1.x checkpoint (StableDiffusionPipeline): `builtin:tiny-image`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import clip_text_config, tiny_autoencoder_kl
from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer


def build_tiny_image(dest: Path) -> None:
    """Write a tiny Stable Diffusion 1.x-style checkpoint (StableDiffusionPipeline) to `dest`.

    VAE scale factor 8 and 77-token CLIP prompts as in the real model; 64x64 images by default.
    """
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = train_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            clip_text_config(tokenizer)
        )
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            norm_num_groups=32,
        )
        torch.manual_seed(SEED)
        vae = tiny_autoencoder_kl(4)
    # Stable Diffusion 1.x's own scheduler settings.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-image": (build_tiny_image, {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 5.0}),
}
