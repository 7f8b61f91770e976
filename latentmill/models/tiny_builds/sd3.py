"""Tiny Stable Diffusion 3.5 checkpoint (StableDiffusion3Pipeline): `builtin:tiny-sd3`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import clip_text_config, tiny_autoencoder_kl
from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer, train_t5_tokenizer


def build_tiny_sd3(dest: Path) -> None:
    """Write a tiny Stable Diffusion 3.5 (large-style) checkpoint (StableDiffusion3Pipeline) to `dest`.

    Same layout and classes as the real model: two CLIP text encoders with projections (pooled
    outputs concatenated) and a T5 encoder, an MMDiT with patch size 2 and RMS q/k norm, a VAE
    with 16 latent channels, scale factor 8 and SD3.5's shift/scaling factors, and the
    flow-matching Euler scheduler with shift 3.0; 64x64 images by default. Configs follow
    diffusers' own SD3 fast tests, scaled so that every component stays under a million
    parameters.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer = train_clip_tokenizer()
    tokenizer_2 = train_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as SD3's second (OpenCLIP bigG) tokenizer: pads with "!", not <|endoftext|>
    tokenizer_3 = train_t5_tokenizer()


    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModelWithProjection(clip_text_config(tokenizer, "quick_gelu"))  # CLIP ViT-L's activation
        torch.manual_seed(SEED)
        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, "gelu"))  # OpenCLIP bigG's
        torch.manual_seed(SEED)
        # T5 v1.1 (as T5-XXL). Its width must be at least the two CLIPs' hidden sizes together (32 + 32),
        # which the pipeline zero-pads up to it, as in the real model (768 + 1280 <= 4096).
        text_encoder_3 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_3),
                d_model=64,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                pad_token_id=tokenizer_3.pad_token_id,
                eos_token_id=tokenizer_3.eos_token_id,
                decoder_start_token_id=tokenizer_3.pad_token_id,
            )
        )
        torch.manual_seed(SEED)
        transformer = SD3Transformer2DModel(
            sample_size=8,  # latent size: 64x64 images by default
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # T5's width
            caption_projection_dim=32,  # = num_attention_heads * attention_head_dim, as in the real model
            pooled_projection_dim=64,  # the two CLIP projections (32 + 32), concatenated
            pos_embed_max_size=64,  # latents up to 128x128 (1024x1024 images)
            qk_norm="rms_norm",  # SD3.5
        )
        torch.manual_seed(SEED)
        vae = tiny_autoencoder_kl(
            16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,  # SD3.5's VAE
            scaling_factor=1.5305,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3.5's settings
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-sd3": (build_tiny_sd3, {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 5.0}),
}
