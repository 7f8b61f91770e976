"""LTX-Video text-to-video checkpoints (diffusers `LTXPipeline`).

The denoise stage runs the plain pipeline's own loop on its packed latents (tokens of the latent
video), told the row's `fps` as the frame rate (LTX scales its rotary positions in time by it); it
hands unpacked latents on. LTX-Video 0.9.1 and later decode at a timestep: the latents are mixed with
noise (`decode_noise_scale`) and the VAE is conditioned on `decode_timestep`. That noise is the second
draw of the row's own generator, after its initial noise, exactly as the plain pipeline draws it. 0.9.1's
decoder also adds noise of its own, from torch's global random state and the same for a whole batch:
such rows are decoded one at a time with that state seeded from the row's seed (the plain pipeline
called right after `torch.manual_seed(seed)` makes the same video). Either way a row's video depends
only on its own seed, whichever rows share its decode batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentmill.models.base import TemporalVAEFamily, cpu_generator
from latentmill.models.standard import NEGATIVE_PROMPT_EMBEDS, PROMPT_EMBEDS, StandardFamily
from latentmill.rows import Request

PROMPT_ATTENTION_MASK = "prompt_attention_mask"
NEGATIVE_PROMPT_ATTENTION_MASK = "negative_prompt_attention_mask"
DECODE_TIMESTEP = "decode_timestep"
DECODE_NOISE_SCALE = "decode_noise_scale"


def ltx_vae_factors(config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of an LTX or LTX-2 video VAE, as diffusers derives it: the config's
    ratios, else its patchify times 2 per space-time scaling level."""
    scaled = 2 ** sum(np.atleast_1d(config["spatio_temporal_scaling"]))
    return (config.get("temporal_compression_ratio") or config["patch_size_t"] * scaled,
            config.get("spatial_compression_ratio") or config["patch_size"] * scaled)


class LTXVideo(TemporalVAEFamily, StandardFamily):
    name = "ltx-video"
    pipeline_classes = ("LTXPipeline",)
    is_video = True
    # The pipeline's own defaults (frame_rate 25), with diffusers' recommended decode settings for 0.9.1+.
    defaults = {"num_inference_steps": 50, "guidance_scale": 3.0, "height": 512, "width": 704, "num_frames": 161,
                "fps": 25.0}
    extra_parameters = {DECODE_TIMESTEP: (float, 0.03), DECODE_NOISE_SCALE: (float, 0.025)}
    stage_components = {"encode": ("tokenizer", "text_encoder"), "denoise": ("transformer", "scheduler"),
                        "decode": ("vae",)}
    max_sequence_length = 128
    vae_class = "AutoencoderKLLTXVideo"

    def conditioning_columns(self) -> tuple[str, ...]:
        return (PROMPT_EMBEDS, PROMPT_ATTENTION_MASK, NEGATIVE_PROMPT_EMBEDS, NEGATIVE_PROMPT_ATTENTION_MASK)

    def vae_factors(self) -> tuple[int, int]:
        return ltx_vae_factors(self.component_config("vae"))

    def _patch_sizes(self) -> tuple[int, int]:
        config = self.component_config("transformer")
        return config.get("patch_size_t", 1), config.get("patch_size", 1)

    def denoise_group_key(self, request: Request) -> tuple:
        # The frame rate steers denoising; the decode settings do not.
        return (request.height, request.width, request.num_frames, request.num_inference_steps,
                request.guidance_scale, request.fps)

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors()
        latent_frames = (request.num_frames - 1) // temporal + 1
        return (self.latent_channels(), latent_frames, request.height // spatial, request.width // spatial)

    def pipeline_latents(self, noise, request: Request):
        from diffusers import LTXPipeline

        patch_t, patch = self._patch_sizes()
        return LTXPipeline._pack_latents(noise, patch, patch_t)

    def final_latents(self, latents, request: Request):
        from diffusers import LTXPipeline

        _, frames, height, width = self.latent_shape(request)
        patch_t, patch = self._patch_sizes()
        return LTXPipeline._unpack_latents(latents, frames // patch_t, height // patch, width // patch, patch, patch_t)

    def denoise_call_kwargs(self, request: Request) -> dict[str, Any]:
        return {"num_frames": request.num_frames, "frame_rate": request.fps}

    def encode_prompt(self, prompts, negative_prompts):
        positive, positive_mask, negative, negative_mask = self._pipeline_encode_prompt(prompts, negative_prompts)
        return {PROMPT_EMBEDS: positive, PROMPT_ATTENTION_MASK: positive_mask,
                NEGATIVE_PROMPT_EMBEDS: negative, NEGATIVE_PROMPT_ATTENTION_MASK: negative_mask}

    def decode_noise(self, request: Request):
        """The noise the plain pipeline mixes into this row's latents before decoding: its generator's
        draw after the initial noise (float32, as the pipeline draws both on a CPU)."""
        import torch

        generator = cpu_generator(request.seed)
        shape = (1, *self.latent_shape(request))
        torch.randn(shape, generator=generator)  # the initial noise
        return torch.randn(shape, generator=generator)

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch

        if not any(self.vae.config.decoder_inject_noise):
            return self._decode(latents, requests)
        devices = [self.vae.device] if self.vae.device.type == "cuda" else []
        frames = []
        for row, request in enumerate(requests):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(request.seed)
                frames.append(self._decode(latents[row:row + 1], [request]))
        return np.concatenate(frames)

    def _decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch
        from diffusers import LTXPipeline

        vae = self.vae
        with torch.inference_mode():
            x = torch.from_numpy(latents).to(vae.device, torch.float32)
            x = LTXPipeline._denormalize_latents(x, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
            timestep = None
            if vae.config.timestep_conditioning:
                noise = torch.cat([self.decode_noise(r) for r in requests]).to(x.device)
                timestep = torch.tensor([r.extra(DECODE_TIMESTEP) for r in requests], device=x.device, dtype=vae.dtype)
                scale = torch.tensor([r.extra(DECODE_NOISE_SCALE) for r in requests], device=x.device)
                x = (1 - scale[:, None, None, None, None]) * x + scale[:, None, None, None, None] * noise
            video = vae.decode(x.to(vae.dtype), timestep, return_dict=False)[0]
            frames = self.video_processor.postprocess_video(video, output_type="np")
        return np.asarray(frames, dtype=np.float32)

    def reference_generate(self, pipe, request: Request) -> np.ndarray:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(request.seed)  # the global state 0.9.1's decoder draws its noise from
            return super().reference_generate(pipe, request)

    def reference_kwargs(self, request: Request) -> dict[str, Any]:
        return {**super().reference_kwargs(request), "frame_rate": request.fps}
