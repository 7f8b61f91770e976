"""Tiny Stable Diffusion XL checkpoint (StableDiffusionXLPipeline): `builtin:tiny-sdxl`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import clip_text_config, tiny_autoencoder_kl
from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer


def build_tiny_sdxl(dest: Path) -> None:
    """Write a tiny Stable Diffusion XL base checkpoint (StableDiffusionXLPipeline) to `dest`.

    Same layout and classes as the real model: two CLIP text encoders (the second with a
    projection, whose pooled output feeds the UNet's "text_time" added conditioning together
    with the six size/crop ids), VAE scale factor 8 with SDXL's scaling factor, SDXL's Euler
    scheduler and `force_zeros_for_empty_prompt`; 64x64 images by default. Configs follow
    diffusers' own SDXL fast tests, scaled so that every component stays under a million
    parameters.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = train_clip_tokenizer()
    tokenizer_2 = train_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as SDXL's second (OpenCLIP bigG) tokenizer: pads with "!", not <|endoftext|>


    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(clip_text_config(tokenizer, "quick_gelu"))  # CLIP ViT-L's activation
        torch.manual_seed(SEED)
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, "gelu"))  # OpenCLIP bigG's
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8,  # latent size: 64x64 images by default
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 1),
            cross_attention_dim=64,  # text_encoder (32) + text_encoder_2 (32) hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + text_encoder_2's projection (32)
            norm_num_groups=32,
        )
        torch.manual_seed(SEED)
        vae = tiny_autoencoder_kl(
            4,
            scaling_factor=0.13025,  # SDXL's VAE
            force_upcast=True,
        )
    # SDXL base's own scheduler settings.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,  # SDXL base: an empty negative prompt means zero embeddings
        add_watermarker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-sdxl": (build_tiny_sdxl, {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 5.0}),
}
