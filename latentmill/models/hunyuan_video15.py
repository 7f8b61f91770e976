"""HunyuanVideo 1.5 text-to-video checkpoints (diffusers `HunyuanVideo15Pipeline`) on its modular blocks.

Two text encoders cross to the denoise pool, each with its mask: Qwen2.5-VL for the prompt and ByT5 for
any quoted text in it (zeros when there is none). Guidance is the checkpoint's classifier-free-guidance
guider, set to each row's `guidance_scale`. Some blocks read components they do not declare: the text
encoder block the transformer's dtype (the embeddings' dtype), the denoise blocks the VAE's latent
channels and scale factors; those stages get weightless stand-ins built from the checkpoint's configs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from latentmill.models.base import EncodedPrompts, TemporalVAEFamily
from latentmill.models.modular import ModularFamily
from latentmill.rows import Request


class HunyuanVideo15(TemporalVAEFamily, ModularFamily):
    name = "hunyuan-video-1.5"
    pipeline_classes = ("HunyuanVideo15Pipeline",)
    blocks_class = "HunyuanVideo15AutoBlocks"  # without an image its denoise sub-block runs text-to-video
    is_video = True
    # The 480p text-to-video setting: 121 frames at 24 fps.
    defaults = {"num_inference_steps": 50, "guidance_scale": 6.0, "height": 480, "width": 848, "num_frames": 121,
                "fps": 24.0}

    def vae_factors(self) -> tuple[int, int]:
        config = self.component_config("vae")
        return config.get("temporal_compression_ratio", 4), config.get("spatial_compression_ratio", 16)

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors()
        latent_frames = (request.num_frames - 1) // temporal + 1
        return (self.latent_channels(), latent_frames, request.height // spatial, request.width // spatial)

    def load_encoder(self, device, dtype) -> None:
        super().load_encoder(device, dtype)
        self.encode_pipe.transformer = self._weightless("transformer").to(dtype)  # the embeddings' dtype

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        # With its guider off the text encoder block fails (it declares negative outputs it never sets):
        # encode every row with guidance on, then ship negatives only for rows whose guidance uses them.
        guided = [request if self.needs_negative(request) else replace(request, guidance_scale=2.0)
                  for request in requests]
        encoded = super().encode(guided)
        for name, values in encoded.tensors.items():
            if name.startswith("negative_"):
                encoded.tensors[name] = [value if self.needs_negative(request) else None
                                         for value, request in zip(values, requests)]
        return encoded

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        self.denoise_pipe.vae = self._weightless("vae")  # else 32 latent channels and 16x, whatever the checkpoint

    def reference_guidance(self, pipe, request: Request) -> dict[str, Any]:
        pipe.guider = pipe.guider.new(guidance_scale=request.guidance_scale)
        return {}
