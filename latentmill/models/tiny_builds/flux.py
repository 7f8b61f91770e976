"""Tiny Flux.1 checkpoint (FluxPipeline): `builtin:tiny-flux`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import clip_text_config, tiny_autoencoder_kl
from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer, train_t5_tokenizer

# T5 prompt length. FluxPipeline's default is 512 (Flux.1-dev's); the tiny tokenizer splits
# prompts into few tokens, so a short length keeps the joint attention small and fast.
MAX_SEQUENCE_LENGTH = 64


def build_tiny_flux(dest: Path) -> None:
    """Write a tiny Flux.1-dev-style checkpoint (FluxPipeline) to `dest`.

    Same layout as the real model: a CLIP text encoder (pooled output) and a T5 encoder (token
    embeddings), a guidance-distilled FluxTransformer2DModel (`guidance_embeds=True`), a 16-channel
    VAE with Flux's scaling/shift factors and 8x spatial compression (16 pixels per token after
    the 2x2 packing), and Flux.1-dev's dynamically shifted flow-matching scheduler. 64x64 images
    by default.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = train_clip_tokenizer()
    tokenizer_2 = train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            clip_text_config(tokenizer)
        )
        torch.manual_seed(SEED)
        # T5 v1.1 layout (gated-GELU feed-forward), as Flux's T5-XXL encoder.
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                tie_word_embeddings=False,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                decoder_start_token_id=tokenizer_2.pad_token_id,
            )
        )
        torch.manual_seed(SEED)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels x 2x2 packing
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 d_model
            pooled_projection_dim=32,  # CLIP hidden size (FluxPipeline uses the pooler output)
            guidance_embeds=True,  # Flux.1-dev (guidance-distilled); Flux.1-schnell has none
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        )
        torch.manual_seed(SEED)
        vae = tiny_autoencoder_kl(
            16,
            scaling_factor=0.3611,  # Flux.1's VAE values
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    # Flux.1-dev's scheduler settings (the shift mu depends on the image's token count).
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-flux": (
        build_tiny_flux,
        {
            "height": 64,
            "width": 64,
            "num_inference_steps": 4,
            "guidance_scale": 3.5,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
        },
    ),
}
