"""Stable Diffusion 1.x/2.x checkpoints (diffusers `StableDiffusionPipeline`)."""

from __future__ import annotations

import numpy as np

from latentmill.models.standard import NEGATIVE_PROMPT_EMBEDS, PROMPT_EMBEDS, StandardFamily
from latentmill.rows import Request


class StableDiffusion(StandardFamily):
    name = "stable-diffusion"
    pipeline_classes = ("StableDiffusionPipeline",)
    defaults = {"num_inference_steps": 50, "guidance_scale": 7.5, "height": 512, "width": 512, "fps": 0.0}
    stage_components = {
        "encode": ("tokenizer", "text_encoder"),
        "denoise": ("unet", "scheduler"),
        "decode": ("vae",),
    }

    def size_multiple(self) -> int:
        # The pipeline itself insists on multiples of 8 whatever the VAE.
        return max(8, self.vae_scale_factor())

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        factor = self.vae_scale_factor()
        channels = self.component_config("unet")["in_channels"]
        return (channels, request.height // factor, request.width // factor)

    def encode_prompt(self, prompts, negative_prompts):
        pipe = self.encode_pipe
        positive, negative = pipe.encode_prompt(prompts, pipe.device, 1, negative_prompts is not None,
                                                negative_prompt=negative_prompts)
        return {PROMPT_EMBEDS: positive, NEGATIVE_PROMPT_EMBEDS: negative}

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        # Without its VAE the pipeline would assume a factor of 8; use the checkpoint's own.
        self.denoise_pipe.vae_scale_factor = self.vae_scale_factor()

    def noise_dtype(self):
        return self.denoise_dtype

    def load_decoder(self, device, dtype) -> None:
        from diffusers import AutoencoderKL
        from diffusers.image_processor import VaeImageProcessor

        self.vae = AutoencoderKL.from_pretrained(self.model_dir, subfolder="vae", dtype=dtype).to(device)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor())

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch

        vae = self.vae
        with torch.inference_mode():
            scaled = torch.from_numpy(latents).to(vae.device, vae.dtype) / vae.config.scaling_factor
            images = vae.decode(scaled, return_dict=False)[0]
            frames = self.image_processor.postprocess(images, output_type="np", do_denormalize=[True] * len(images))
        return frames[:, None].astype(np.float32)
