"""CogVideoX text-to-video checkpoints (diffusers `CogVideoXPipeline`: CogVideoX 2B/5B and 1.5).

Latents are frames-first, (frames, channels, height, width), as the pipeline keeps them. CogVideoX 1.5's
transformer patches two latent frames together, so the pipeline pads the latent frames to an even count
(at the front) and the denoise stage drops the padding before handing the latents on, as the pipeline
does before decoding. The VAE decodes the first latent frame (plus the odd one out) and then pairs of
latent frames, 8 video frames each: only 8k+1 frames come out as asked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentmill.models.base import frame_count_problem
from latentmill.models.standard import StandardFamily
from latentmill.rows import Request

# Latent frames the VAE decodes together after the first (AutoencoderKLCogVideoX's frame batch).
DECODED_LATENT_FRAMES = 2


class CogVideoX(StandardFamily):
    name = "cogvideox"
    pipeline_classes = ("CogVideoXPipeline",)
    is_video = True
    defaults = {"num_inference_steps": 50, "guidance_scale": 6.0, "height": 480, "width": 720, "num_frames": 49,
                "fps": 8.0}
    stage_components = {"encode": ("tokenizer", "text_encoder"), "denoise": ("transformer", "scheduler"),
                        "decode": ("vae",)}
    max_sequence_length = 226
    vae_class = "AutoencoderKLCogVideoX"

    def _temporal_factor(self) -> int:
        return self.component_config("vae").get("temporal_compression_ratio", 4)

    def size_multiple(self) -> int:
        return self.vae_scale_factor() * self.component_config("transformer")["patch_size"]

    def check_request(self, request: Request) -> str | None:
        step = DECODED_LATENT_FRAMES * self._temporal_factor()
        return frame_count_problem(request.num_frames, step) or super().check_request(request)

    def output_frames(self, request: Request) -> int:
        return request.num_frames

    def _latent_frames(self, request: Request) -> tuple[int, int]:
        """(latent frames of the video, padding frames the pipeline adds in front for the transformer)."""
        frames = (request.num_frames - 1) // self._temporal_factor() + 1
        patch_t = self.component_config("transformer").get("patch_size_t") or 1
        return frames, -frames % patch_t

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        """The initial noise as the pipeline draws it: padding frames included."""
        frames, padding = self._latent_frames(request)
        factor = self.vae_scale_factor()
        channels = self.component_config("transformer")["in_channels"]
        return (frames + padding, channels, request.height // factor, request.width // factor)

    def final_latents(self, latents, request: Request):
        return latents[:, self._latent_frames(request)[1]:]

    def noise_dtype(self):
        return self.denoise_dtype  # the pipeline draws its noise in the embeddings' dtype

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        # Without its VAE the pipeline would assume 8x spatial and 4x temporal; use the checkpoint's own.
        self.denoise_pipe.vae_scale_factor_spatial = self.vae_scale_factor()
        self.denoise_pipe.vae_scale_factor_temporal = self._temporal_factor()

    def denoise_call_kwargs(self, request: Request) -> dict[str, Any]:
        return {"num_frames": request.num_frames}

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch

        vae = self.vae
        with torch.inference_mode():
            x = torch.from_numpy(latents).to(vae.device, vae.dtype).permute(0, 2, 1, 3, 4)  # channels first
            video = vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]
            frames = self.video_processor.postprocess_video(video, output_type="np")
        return np.asarray(frames, dtype=np.float32)
