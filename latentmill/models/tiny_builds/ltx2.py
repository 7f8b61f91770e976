"""Tiny LTX-2 video-with-audio checkpoint (LTX2Pipeline): `builtin:tiny-ltx2`.

Component configs follow diffusers' own tiny LTX-2 test components (tests/pipelines/ltx2/testing_utils.py),
except that the video VAE has the real model's compression (32x spatial, 8x temporal), the audio VAE the
real mel layout (4x in time and mel bins, `base_channels` = latent channels x latent mel bins, which its
latent statistics need), the vocoder upsamples each mel frame to exactly one hop of 16 kHz audio (so the
audio lasts as long as the video, as with the real 24 kHz vocoder), and the Gemma 3 text encoder's config
and tokenizer are built here instead of downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.tokenizers import CORPUS

_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4, as GemmaTokenizer lays them out


def train_gemma_tokenizer():
    """A transformers GemmaTokenizer (BPE with byte fallback, as Gemma 3's) learnt from `CORPUS`.

    Trained with the normalizer and pre-tokenizer GemmaTokenizer rebuilds on load, so the merges apply
    unchanged; the 256 byte tokens make any text tokenize (byte fallback) without unknowns.
    """
    from tokenizers import Tokenizer, models, trainers
    from transformers import GemmaTokenizer

    reference = GemmaTokenizer().backend_tokenizer
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  special_tokens=list(_GEMMA_SPECIALS) + bytes_)
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) for m in model["merges"]]
    vocab = {token: i for token, i in sorted(model["vocab"].items(), key=lambda item: item[1])}
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=1024)


def build_tiny_ltx2(dest: Path) -> None:
    """Write a tiny LTX-2 checkpoint to `dest`: Gemma 3 encoder (2 layers, 32 wide), text connectors, a
    2-layer audio-video transformer over 8 video and 2 audio latent channels, video VAE, audio VAE and
    vocoder; seeded latent statistics (not 0 and 1, so a skipped normalisation shows)."""
    import torch
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2Pipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = train_gemma_tokenizer()
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        query_pre_attn_scalar=16, sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    vision_config = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=28, patch_size=14)
    video_channels, audio_channels, mel_bins = 8, 2, 16
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=text_config, vision_config=vision_config, mm_tokens_per_image=4,
            boi_token_index=len(tokenizer) - 1, eoi_token_index=len(tokenizer) - 1,
            image_token_index=len(tokenizer) - 1))
        torch.manual_seed(SEED)
        connectors = LTX2TextConnectors(
            caption_channels=32, text_proj_in_factor=3,  # the encoder's width, its layers + the embeddings
            video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
            video_connector_num_layers=1, video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
            causal_temporal_positioning=False, rope_type="split",
        )
        torch.manual_seed(SEED)
        transformer = LTX2VideoTransformer3DModel(
            in_channels=video_channels, out_channels=video_channels, patch_size=1, patch_size_t=1,
            num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            audio_in_channels=audio_channels * mel_bins // 4, audio_out_channels=audio_channels * mel_bins // 4,
            audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
            num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=32,
            rope_double_precision=False, rope_type="split",
        )
        torch.manual_seed(SEED)
        vae = AutoencoderKLLTX2Video(
            latent_channels=video_channels,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            downsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal", "spatial"),
            upsample_residual=(True, True, True),
            upsample_factor=(2, 2, 2),
            patch_size=4,
            patch_size_t=1,
            timestep_conditioning=False,
            encoder_causal=True,
            decoder_causal=False,
        )
        vae.latents_mean.copy_(torch.randn(video_channels) * 0.5)
        vae.latents_std.copy_(0.5 + torch.rand(video_channels) * 2)
        torch.manual_seed(SEED)
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=audio_channels * mel_bins // 4, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1,
            in_channels=2, resolution=32, latent_channels=audio_channels, norm_type="pixel", causality_axis="height",
            dropout=0.0, mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True,
            mel_bins=mel_bins,
        )
        audio_vae.latents_mean.copy_(torch.randn(audio_vae.latents_mean.shape) * 0.5)
        audio_vae.latents_std.copy_(0.5 + torch.rand(audio_vae.latents_std.shape) * 2)
        torch.manual_seed(SEED)
        vocoder = LTX2Vocoder(
            in_channels=2 * mel_bins, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[20, 32],
            upsample_factors=[10, 16], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
            leaky_relu_negative_slope=0.1, output_sampling_rate=16000,  # 10 x 16 = one 160-sample hop per mel frame
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift_terminal=0.1,
        use_dynamic_shifting=True,
    )  # LTX-2's own scheduler settings
    pipe = LTX2Pipeline(scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    "tiny-ltx2": (
        build_tiny_ltx2,
        # 64 prompt tokens instead of the real 1024: the tiny transformer's time goes into cross-attention
        {"height": 64, "width": 64, "num_frames": 9, "fps": 25, "num_inference_steps": 4, "guidance_scale": 3.0,
         "max_sequence_length": 64},
    ),
}
