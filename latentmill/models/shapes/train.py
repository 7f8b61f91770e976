"""Train `builtin:shapes` (`latentmill models train-shapes DIR`): latent diffusion proper, on CPU.

First an AutoencoderKL learns to compress the 64x64 pictures 8x to 8x8x8 latents (reconstruction
plus a small KL term); then the UNet and the CLIP text encoder learn together to denoise those
latents, 10% of captions left empty so classifier-free guidance works. Seeds and step counts are
fixed, so the same command on the same thread count writes the same weights.

Where a shape goes is the hard part: a model that learns colour and shape easily still puts the shape
where the seed's noise suggests. What made the caption decide it:
- The noise schedule reaches pure noise (zero terminal SNR, v-prediction, "trailing" sampling steps)
  and is DDPM's linear one, far noisier than Stable Diffusion's. With SD's, an 8x8 latent still shows
  where a shape is at almost every training step, so the model learns to read the place from the noisy
  latent rather than from the caption. Measured on the 48 held-out pictures: with SD's schedule, UNets
  of 2, 3 and 4 levels had the shape in place in at most 12 within 4,000 steps; with this one, the 4-level
  UNet had 28 after 3,000 steps.
- The UNet goes down to 1x1, where the caption reaches the whole picture through one cell's
  cross-attention and the padded convolutions on the way back up can map it to a quadrant.
"""

from __future__ import annotations

import time
from pathlib import Path

from latentmill.models.shapes import data

SEED = 0
IMAGES_PER_SCENE = 15
LATENT_CHANNELS = 8
VAE_STEPS = 800
VAE_LEARNING_RATE = 2e-3
VAE_BATCH = 16
KL_WEIGHT = 1e-6  # Stable Diffusion's VAE weight: KL sum against the squared error summed over pixel values
UNET_STEPS = 10000
UNET_BATCH = 32
EMPTY_CAPTION_RATE = 0.1
DENOISER_LEARNING_RATE = 2e-3
MAX_TOKENS = 20  # the longest caption is 14 tokens; real SD uses 77, short context is 4x cheaper here
# DDPM's linear schedule rescaled to zero terminal SNR, used both to train and to sample.
NOISE_SCHEDULE = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000,
                  "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}


def _log(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)


def _lr_lambda(steps: int):
    """Linear warm-up over 5% of the steps, then linear decay to zero."""
    warmup = max(1, steps // 20)
    return lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup)))


def build_vae():
    """Four levels: SD's 8x spatial compression (64x64 pictures -> 8x8 latents); 8 latent channels
    rather than 4, so a small shape's 2x2 latent cells still hold its outline."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 32, 32),
                         layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=4,
                         sample_size=data.SIZE)


def build_unet():
    """Four levels (8x8 down to 1x1), cross-attention on each and in the middle."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=data.SIZE // 8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        layers_per_block=1, block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 4, up_block_types=("CrossAttnUpBlock2D",) * 4,
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    )


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def train_vae(vae, pixels, started: float) -> None:
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(VAE_STEPS))
    generator = torch.Generator().manual_seed(SEED)
    vae.train()
    for step in range(VAE_STEPS):
        batch = pixels[torch.randint(len(pixels), (VAE_BATCH,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, batch)
        loss = mse + KL_WEIGHT * posterior.kl().mean() / batch[0].numel()  # both per pixel value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == VAE_STEPS - 1:
            _log(started, f"vae step {step}: reconstruction mse {mse.item():.5f}")


def encode_latents(vae, pixels):
    """Every picture's latent distribution (mean, std), for sampling fresh latents at each UNet step."""
    import torch

    vae.eval()
    means, stds = [], []
    with torch.no_grad():
        for chunk in pixels.split(256):
            posterior = vae.encode(chunk).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(unet, text_encoder, token_ids, empty_ids, means, stds, scaling_factor, started) -> None:
    import torch
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**NOISE_SCHEDULE)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=DENOISER_LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(UNET_STEPS))
    generator = torch.Generator().manual_seed(SEED + 1)
    unet.train()
    text_encoder.train()
    for step in range(UNET_STEPS):
        index = torch.randint(len(means), (UNET_BATCH,), generator=generator)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling_factor
        ids = token_ids[index].clone()
        ids[torch.rand(UNET_BATCH, generator=generator) < EMPTY_CAPTION_RATE] = empty_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(NOISE_SCHEDULE["num_train_timesteps"], (UNET_BATCH,), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(prediction, noise_scheduler.get_velocity(latents, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == UNET_STEPS - 1:
            _log(started, f"unet step {step}: velocity mse {loss.item():.4f}")


def train_shapes(dest: Path, threads: int = 1) -> float:
    """Train the model and write it to `dest` as a diffusers StableDiffusionPipeline folder; returns the
    minutes it took. Weights stay float32: a plain `from_pretrained(dest)` loads them as saved, and half
    precision cannot run on every CPU."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer

    started = time.monotonic()
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    images, captions = data.dataset(len(data.training_scenes()) * IMAGES_PER_SCENE, SEED)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    tokenizer = train_clip_tokenizer([scene.caption for scene in data.all_scenes()], MAX_TOKENS)
    tokenize = lambda texts: tokenizer(texts, padding="max_length", max_length=MAX_TOKENS,  # noqa: E731
                                       truncation=True, return_tensors="pt").input_ids
    token_ids, empty_ids = tokenize(captions), tokenize([""])[0]
    _log(started, f"{len(images)} pictures of {len(data.training_scenes())} scenes, vocabulary {len(tokenizer)}")

    vae = build_vae()
    train_vae(vae, pixels, started)
    means, stds = encode_latents(vae, pixels)
    scaling_factor = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    _log(started, f"latent scaling factor {scaling_factor:.4f}")

    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    train_denoiser(unet, text_encoder, token_ids, empty_ids, means, stds, scaling_factor, started)

    scheduler = DDIMScheduler(**NOISE_SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(dest, safe_serialization=True)
    minutes = (time.monotonic() - started) / 60
    _log(started, f"wrote {dest} ({minutes:.1f} minutes)")
    return minutes
