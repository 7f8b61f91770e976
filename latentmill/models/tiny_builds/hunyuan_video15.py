"""Tiny HunyuanVideo 1.5 text-to-video checkpoint (HunyuanVideo15Pipeline): `builtin:tiny-hunyuan-video15`."""

from __future__ import annotations

from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import t5_encoder_settings
from latentmill.models.tiny_builds.qwen import train_qwen_tokenizer


def build_tiny_hunyuan_video15(dest: Path) -> None:
    """Write a tiny HunyuanVideo 1.5 text-to-video checkpoint to `dest`.

    The real layout at a few thousand parameters per component: a Qwen2.5-VL text model and a ByT5
    encoder (for quoted text in the prompt), a transformer that takes the latents plus the (empty,
    text-to-video) condition latents and mask, a VAE with the real 16x spatial and 4x temporal
    compression, a classifier-free-guidance guider.
    """
    import torch
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tokenizer = train_qwen_tokenizer()
    tokenizer_2 = ByT5Tokenizer()  # bytes: nothing to learn
    ids = tokenizer.convert_tokens_to_ids
    hidden_size, latent_channels = 32, 8
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden_size,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
                bos_token_id=ids("<|endoftext|>"),
                eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"),
            )
        ).eval()
        torch.manual_seed(SEED)
        text_encoder_2 = T5EncoderModel(T5Config(**t5_encoder_settings(tokenizer_2))).eval()
        torch.manual_seed(SEED)
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * latent_channels + 1,  # latents, condition latents, condition mask
            out_channels=latent_channels,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=hidden_size,
            text_embed_2_dim=32,
            image_embed_dim=12,
            rope_axes_dim=(2, 2, 4),  # (frame, height, width), summing to attention_head_dim
            target_size=64,
            task_type="t2v",
        ).eval()
        torch.manual_seed(SEED)
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=latent_channels,
            block_out_channels=(8, 8, 8, 8, 8),
            layers_per_block=1,
            spatial_compression_ratio=16,
            temporal_compression_ratio=4,
        ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # the 480p text-to-video setting
    guider = ClassifierFreeGuidance(guidance_scale=6.0)
    pipe = HunyuanVideo15Pipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                  scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                  guider=guider)
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-hunyuan-video15": (
        build_tiny_hunyuan_video15,
        {"height": 64, "width": 64, "num_frames": 9, "fps": 24, "num_inference_steps": 4, "guidance_scale": 6.0},
    ),
}
