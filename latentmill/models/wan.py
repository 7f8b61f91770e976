"""Wan text-to-video checkpoints (diffusers `WanPipeline`): Wan 2.1; Wan 2.2 A14B with both experts in
the denoise pool's actors (the high-noise `transformer` hands over to the low-noise `transformer_2` at
`boundary_ratio`, each with its own guidance scale); Wan 2.2 TI2V-5B (`expand_timesteps`: one timestep
per latent token, and a VAE with 16x spatial compression whose factors the denoise stage must take from
the checkpoint, as it holds no VAE)."""

from __future__ import annotations

from typing import Any

import numpy as np

from latentmill.models.base import frame_count_problem
from latentmill.models.standard import StandardFamily
from latentmill.rows import Request



class Wan(StandardFamily):
    name = "wan"
    pipeline_classes = ("WanPipeline",)
    is_video = True
    max_sequence_length = 512
    vae_class = "AutoencoderKLWan"
    def two_experts(self) -> bool:
        return bool((self.index.get("transformer_2") or [None])[0]) and self.index.get("boundary_ratio") is not None

    @property
    def stage_components(self) -> dict[str, tuple[str, ...]]:
        experts = ("transformer", "transformer_2") if self.two_experts() else ("transformer",)
        return {"encode": ("tokenizer", "text_encoder"), "denoise": (*experts, "scheduler"), "decode": ("vae",)}

    @property
    def extra_parameters(self) -> dict[str, tuple[type, Any]]:  # type: ignore[override]
        # The low-noise expert's guidance scale (Wan 2.2 A14B's published setting: 3.0 with 4.0 for the first).
        return {"guidance_scale_2": (float, 3.0)} if self.two_experts() else {}

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        if self.index.get("expand_timesteps"):  # TI2V-5B's published setting: 704 x 1280, 121 frames at 24 fps
            return {"num_inference_steps": 50, "guidance_scale": 5.0, "height": 704, "width": 1280, "num_frames": 121,
                    "fps": 24.0}
        return {"num_inference_steps": 50, "guidance_scale": 5.0, "height": 480, "width": 832, "num_frames": 81,
                "fps": 16.0}

    def _vae_factors(self) -> tuple[int, int]:
        config = self.component_config("vae")
        return config.get("scale_factor_temporal", 4), config.get("scale_factor_spatial", 8)

    def vae_scale_factor(self) -> int:
        return self._vae_factors()[1]

    def size_multiple(self) -> int:
        patch = self.component_config("transformer")["patch_size"]
        return max(16, self.vae_scale_factor() * max(patch[1], patch[2]))

    def check_request(self, request: Request) -> str | None:
        return frame_count_problem(request.num_frames, self._vae_factors()[0]) or super().check_request(request)

    def output_frames(self, request: Request) -> int:
        return request.num_frames

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        temporal, spatial = self._vae_factors()
        channels = self.component_config("transformer")["in_channels"]
        latent_frames = (request.num_frames - 1) // temporal + 1
        return (channels, latent_frames, request.height // spatial, request.width // spatial)

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        # Without its VAE the pipeline would assume 4x temporal and 8x spatial; use the checkpoint's own.
        pipe = self.denoise_pipe
        pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = self._vae_factors()

    def denoise_call_kwargs(self, request: Request) -> dict[str, Any]:
        return {"num_frames": request.num_frames, **dict(request.extras)}

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch

        vae = self.vae
        z_dim = vae.config.z_dim
        with torch.inference_mode():
            x = torch.from_numpy(latents).to(vae.device, vae.dtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(x.device, x.dtype)
            inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(x.device, x.dtype)
            video = vae.decode(x / inverse_std + mean, return_dict=False)[0]
            frames = self.video_processor.postprocess_video(video, output_type="np")
        return np.asarray(frames, dtype=np.float32)
