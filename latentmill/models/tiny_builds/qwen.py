"""Tiny Qwen-Image and Z-Image checkpoints: `builtin:tiny-qwen-image` (QwenImagePipeline), `builtin:tiny-z-image`
(ZImagePipeline).

Both families encode prompts with a Qwen language model through a Qwen2 byte-level BPE tokenizer, so
they share `train_qwen_tokenizer`. Component configs follow diffusers' own tiny test components
(tests/pipelines/qwenimage/test_qwenimage.py, tests/pipelines/z_image/test_z_image.py), except that
the VAEs have the real models' 16 latent channels and 8x downsampling (the factor a pipeline assumes
when it is loaded without its VAE), and that the text encoders' configs and tokenizers are built here
instead of downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from latentmill.models.tiny_builds import SEED
from latentmill.models.tiny_builds.components import tiny_autoencoder_kl
from latentmill.models.tiny_builds.tokenizers import CORPUS

# Qwen2.5-VL's special tokens, in their real id order (151643...), then Qwen3's thinking tags.
_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_QWEN3_THINK_TOKENS = ("<think>", "</think>")  # added but not special, as in Qwen3's tokenizer

# Qwen3's chat template reduced to plain-text messages: what ZImagePipeline renders with
# `apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)`,
# "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", byte for byte as the real one does
# (enable_thinking=False appends the empty think block, also as the real one does).
_QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# The text around the prompt in both pipelines' templates (QwenImagePipeline.prompt_template_encode,
# the chat template above). Training on it (twice, so every word is merged into a single token, as
# the real vocabulary has them) makes Qwen-Image's system prefix exactly 34 tokens long, the
# `prompt_template_encode_start_idx` the pipeline drops: the prompt embeddings then hold the user
# prompt only, as with the real tokenizer.
_TEMPLATE_TEXT = (
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:\n",
    "user\n",
    "assistant\n",
)


def train_qwen_tokenizer():
    """A transformers Qwen2Tokenizer (byte-level BPE, as Qwen2.5-VL's and Qwen3's) learnt from `CORPUS`.

    Trained with the normalizer and pre-tokenizer Qwen2Tokenizer rebuilds on load, so the merges
    apply unchanged; every byte is in the vocabulary, so any text tokenizes. Holds the chat special
    tokens both pipelines use (and Qwen2.5-VL's vision tokens, which its model config refers to),
    pads with <|endoftext|> as the real one, and has a chat template (ZImagePipeline applies it).
    Deterministic (byte-identical files from build to build, checked across processes): with no
    end-of-word suffix every symbol id comes from the sorted alphabet, so merge ties break the same way.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    reference = Qwen2Tokenizer().backend_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, show_progress=False, initial_alphabet=alphabet)
    bpe.train_from_iterator(CORPUS + _TEMPLATE_TEXT * 2, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

    tokens = alphabet + [a + b for a, b in merges] + list(_QWEN_SPECIAL_TOKENS + _QWEN3_THINK_TOKENS)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[tok for tok in _QWEN_SPECIAL_TOKENS if tok not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
        chat_template=_QWEN3_CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in _QWEN3_THINK_TOKENS])
    return tokenizer


def build_tiny_qwen_image(dest: Path) -> None:
    """Write a tiny Qwen-Image checkpoint (QwenImagePipeline) to `dest`.

    Qwen2.5-VL text encoder (vision tower included, as the class has one), 16-channel VAE with 8x
    spatial downsampling and the real latent statistics, 2x2-patch MMDiT, Qwen-Image's scheduler.
    Sizes must be multiples of 16; 64x64 by default. As with the real model, the scheduler's
    shift_terminal makes a 1-step schedule NaN: use 2 steps or more.
    """
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = train_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    hidden_size = 32
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config={
                    "vocab_size": len(tokenizer),
                    "hidden_size": hidden_size,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                    "max_position_embeddings": 2048,
                    "max_window_layers": 2,
                    # Multimodal RoPE split over (time, height, width) in the real 2:3:3 ratio of
                    # the head's rotary half (head_dim 16).
                    "rope_parameters": {
                        "rope_type": "default",
                        "mrope_section": [2, 3, 3],
                        "rope_theta": 1000000.0,
                    },
                    "bos_token_id": ids("<|endoftext|>"),
                    "eos_token_id": ids("<|im_end|>"),
                    "pad_token_id": ids("<|endoftext|>"),
                },
                vision_config={
                    "depth": 2,
                    "hidden_size": 16,
                    "intermediate_size": 16,
                    "num_heads": 2,
                    "out_hidden_size": hidden_size,
                    "fullatt_block_indexes": [1],
                },
                image_token_id=ids("<|image_pad|>"),
                video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"),
                vision_end_token_id=ids("<|vision_end|>"),
            )
        ).eval()
        torch.manual_seed(SEED)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16 * 4,  # 16 latent channels in 2x2 patches
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=hidden_size,
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),  # (frame, height, width), summing to attention_head_dim
        )
        torch.manual_seed(SEED)
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],  # three downsamplings: 8x, as the real VAE
        )  # latents_mean / latents_std: the real model's (the class defaults)
    # Qwen-Image's own scheduler settings.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    pipe = QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(dest, safe_serialization=True)


def build_tiny_z_image(dest: Path) -> None:
    """Write a tiny Z-Image checkpoint (ZImagePipeline) to `dest`.

    Qwen3 text encoder (its second-to-last hidden state conditions the transformer), Flux-style
    16-channel AutoencoderKL with 8x downsampling and Flux's latent scaling, single-stream DiT with
    2x2 patches, Z-Image-Turbo's scheduler. Sizes must be multiples of 16; 64x64 by default.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = train_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    hidden_size = 32
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(SEED)
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=hidden_size,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=2048,
                max_window_layers=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
                bos_token_id=ids("<|endoftext|>"),
                eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"),
            )
        ).eval()
        torch.manual_seed(SEED)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=64,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            norm_eps=1e-5,
            qk_norm=True,
            cap_feat_dim=hidden_size,
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[16, 8, 8],  # (caption/frame, height, width), summing to the head size
            axes_lens=[1024, 512, 512],
        )
        # The learned padding tokens (attended, they fill each sequence up to a multiple of 32) start
        # as zeros in this diffusers and as torch.empty in older ones: give them seeded values, like
        # a trained checkpoint's and reproducible whatever the diffusers version.
        with torch.no_grad():
            for pad_token in (transformer.x_pad_token, transformer.cap_pad_token):
                pad_token.normal_(std=0.02)
        torch.manual_seed(SEED)
        vae = tiny_autoencoder_kl(
            16,
            scaling_factor=0.3611,  # Flux's VAE, which Z-Image uses
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    # Z-Image-Turbo's scheduler settings.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(dest, safe_serialization=True)


MODELS = {
    # Qwen-Image's classifier-free guidance is `true_cfg_scale` (> 1 with a negative prompt, "" counts);
    # its `guidance_scale` is only for guidance-distilled transformers and is ignored here.
    "tiny-qwen-image": (
        build_tiny_qwen_image,
        {"height": 64, "width": 64, "num_inference_steps": 4, "true_cfg_scale": 4.0},
    ),
    # Z-Image applies classifier-free guidance whenever guidance_scale > 0: pos + g * (pos - neg).
    "tiny-z-image": (
        build_tiny_z_image,
        {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 4.0},
    ),
}
