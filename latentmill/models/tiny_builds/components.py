"""Configs the tiny checkpoints share: the same small CLIP text encoder in every CLIP-conditioned family."""

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
