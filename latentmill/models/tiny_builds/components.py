"""What the tiny checkpoints share: small CLIP and T5 text-encoder configs, one small AutoencoderKL layout."""

from __future__ import annotations


def clip_text_config(tokenizer, hidden_act: str = "quick_gelu"):
    """A 2-layer, 32-wide CLIP text encoder for `tokenizer` (77 positions, 32-wide projection).

    Two layers, so families that condition on the penultimate layer's hidden states have one.
    """
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_encoder_settings(tokenizer) -> dict:
    """A 2-layer, 32-wide T5 v1.1 encoder (gated-GELU feed-forward) for `tokenizer`: the arguments of a
    T5Config or a UMT5Config."""
    return dict(
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


def tiny_autoencoder_kl(latent_channels: int, **real_model_settings):
    """A 4-level AutoencoderKL (8x spatial compression, as the real ones) with the family's latent channels
    and its real scaling/shift factors and conv options; weights from the caller's seeded RNG."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        **real_model_settings,
    )
