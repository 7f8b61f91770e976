"""Built-in tiny diffusers checkpoints.

They let the whole system (CLI, Ray stages, tests) run end to end on a laptop CPU without
downloading anything: each is a complete diffusers checkpoint with the same layout and
component classes as a real one (Stable Diffusion 1.x for images, Wan 2.1 for video), only
with at most about a million randomly initialised parameters per component. Weights are
seeded and the tokenizers are trained on a fixed corpus, so every build writes byte-identical
files.

Heavy libraries are imported inside the functions so that importing this module (and
starting the CLI) stays instant.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Bump when any builder changes its output, so caches built by older code are not reused.
_VERSION = "v2"
_SEED = 0

# Tokenizer training text: prompt-like sentences, so that common prompt words get their own
# tokens while anything else still tokenizes (byte-level BPE for CLIP, <unk> for T5).
_CORPUS = (
    "a photo of a cat sitting on a red sofa in the living room",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a dog running through the snow in slow motion",
    "close-up portrait of an old man with a grey beard, 35mm film",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "waves crashing on a rocky beach at dawn, cinematic lighting",
    "a futuristic city skyline at night with neon lights and flying cars",
    "a small cabin in a snowy forest, smoke rising from the chimney",
    "a bowl of ramen with chopsticks, top view, studio photo",
    "a robot playing the piano on a stage, spotlight, 4k",
    "a field of sunflowers under a blue sky with white clouds",
    "a timelapse of clouds moving over the mountains",
    "a drone shot flying over a green valley with a river",
    "a girl reading a book by the window on a rainy day",
    "an oil painting of a ship in a storm, dramatic waves",
    "a macro photo of a bee on a purple flower",
    "a busy street market in the evening, people walking, lanterns",
    "a panda eating bamboo in a misty bamboo forest",
    "a cup of coffee with latte art on a marble counter",
    "a red sports car driving fast along a coastal road",
    "a cute cartoon fox wearing a scarf, children's book illustration",
    "an ancient temple covered in vines in the jungle",
    "a golden retriever puppy playing with a ball in the park",
    "a bird's eye view of a snowy mountain range at sunrise",
    "a medieval knight in shining armor holding a sword",
    "a glass of orange juice on a kitchen table, morning light",
    "a hot air balloon floating over a desert at sunset",
    "a child blowing bubbles in the garden, soft focus",
    "a neon sign that says open in a dark alley, rain reflections",
    "an underwater scene with colorful fish and coral reef",
    "a black and white photo of a jazz band playing in a club",
    "a train crossing a bridge over a deep canyon",
    "a fantasy castle on a floating island, high detail, concept art",
    "a close-up of raindrops on a leaf, shallow depth of field",
    "a woman dancing in a field of tall grass, slow motion video",
    "a camera slowly panning across a quiet lake with reflections",
    "a chef cooking pasta in a busy restaurant kitchen",
    "a pixel art scene of a village with houses and trees",
    "a low poly 3d render of a mountain and a lake",
    "a sketch of a horse drawn with charcoal on paper",
    "a café in paris with tables outside, warm evening light",
    "a crowd cheering at a football match, wide angle, 8 fps",
)

TINY_DEFAULTS: dict[str, dict] = {
    "tiny-image": {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 5.0},
    "tiny-video": {
        "height": 64,
        "width": 64,
        "num_frames": 9,
        "fps": 8,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
    },
}
"""Generation settings that are valid for each tiny model and take well under a second on CPU.

They are stored in the checkpoint's model_index.json under `_latentmill_defaults` (keys that start
with `_` are metadata to diffusers), so a copy of the folder carries them.
"""


def _record_defaults(dest: Path, name: str) -> None:
    import json

    index_file = Path(dest) / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_latentmill_defaults"] = TINY_DEFAULTS[name]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _train_clip_tokenizer():
    """A transformers CLIPTokenizer whose BPE merges are learnt from `_CORPUS`.

    Training uses the exact normalizer and pre-tokenizer CLIPTokenizer rebuilds on load, so
    the merges apply unchanged. The vocabulary holds every byte (alone and word-final), so any
    text, emoji and RTL scripts included, tokenizes without unknowns.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer().backend_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_final = [ch + "</w>" for ch in alphabet]
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        # Giving the word-final symbols fixed ids up front makes merge tie-breaking (and
        # hence the output) independent of the trainer's hash-map iteration order.
        special_tokens=word_final,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

    tokens = alphabet + word_final + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _train_t5_tokenizer():
    """A transformers T5Tokenizer (Unigram, like UMT5's) learnt from `_CORPUS`.

    Trained with the pre-tokenizer T5Tokenizer rebuilds on load. The Unigram trainer's output
    order and scores vary slightly between runs, so they are canonicalised for byte-identical
    builds. Characters that are neither in the corpus nor printable ASCII map to <unk> (T5
    has no byte fallback), which never fails.
    """
    import string

    from tokenizers import Tokenizer, models, trainers
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: the layout T5Tokenizer expects
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = T5Tokenizer(extra_ids=0).backend_tokenizer.pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=1000, show_progress=False, special_tokens=specials, unk_token="<unk>"
    )
    unigram.train_from_iterator(_CORPUS, trainer)
    pieces = json.loads(unigram.to_str())["model"]["vocab"]
    learnt = {piece: score for piece, score in pieces if piece not in specials}
    # Characters kept only for coverage get the trainer's minimum score plus 1e-4 steps in
    # hash-map order: give them all that minimum.
    floor = round(min(learnt.values()), 4)
    learnt = {piece: round(score, 6) if score > floor + 0.01 else floor for piece, score in learnt.items()}
    # Printable ASCII never seen in training still gets a (least likely) piece of its own.
    for char in string.ascii_letters + string.digits + string.punctuation:
        learnt.setdefault(char, floor - 1.0)
    vocab = [(piece, 0.0) for piece in specials]
    vocab += sorted(learnt.items(), key=lambda item: (-item[1], item[0]))
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def build_tiny_image(dest: Path) -> None:
    """Write a tiny Stable Diffusion 1.x-style checkpoint (StableDiffusionPipeline) to `dest`.

    VAE scale factor 8 and 77-token CLIP prompts as in the real model; 64x64 images by default.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _train_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(_SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        torch.manual_seed(_SEED)
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
        torch.manual_seed(_SEED)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
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
    _record_defaults(dest, "tiny-image")


def build_tiny_video(dest: Path) -> None:
    """Write a tiny Wan 2.1 text-to-video checkpoint (WanPipeline) to `dest`.

    Same VAE compression as the real model (8x spatial, 4x temporal, 16 latent channels and
    its latents_mean/std) and a UMT5 text encoder; 9 frames of 64x64 by default.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _train_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(_SEED)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
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
        )
        torch.manual_seed(_SEED)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        torch.manual_seed(_SEED)
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    # The scheduler Wan 2.1 checkpoints ship with (flow_shift 3.0 is their 480p setting).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        num_train_timesteps=1000,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
    _record_defaults(dest, "tiny-video")


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "tiny-image": build_tiny_image,
    "tiny-video": build_tiny_video,
}


def _default_cache_dir() -> Path:
    env = os.environ.get("LATENTMILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "latentmill"


def ensure_builtin(name: str, cache_dir: Path | None = None) -> Path:
    """Return the directory of built-in model `name`, building it there on first use.

    Safe to call from many processes at once (e.g. every Ray actor on a node): each builds
    into its own temporary sibling and renames it into place, which is atomic; a process that
    loses the race discards its copy and uses the winner's. A directory at the final path is
    therefore always complete.
    """
    if name not in TINY_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(sorted(TINY_MODELS))}")
    target = Path(cache_dir or _default_cache_dir()) / "models" / f"{name}-{_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        TINY_MODELS[name](tmp)
        try:
            os.rename(tmp, target)
        except OSError as err:  # target appeared meanwhile: another process won the race
            if not (target / "model_index.json").is_file():
                raise RuntimeError(f"{target} exists but is not a complete checkpoint; delete it") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our copy, if the rename did not take it
    return target


def init_tiny(dest_dir: Path) -> dict[str, Path]:
    """Write every built-in tiny model to `dest_dir/<name>` (`latentmill models init-tiny DIR`)."""
    paths = {}
    for name, build in TINY_MODELS.items():
        paths[name] = Path(dest_dir) / name
        build(paths[name])
    return paths
