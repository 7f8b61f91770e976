"""Flux.1 checkpoints (diffusers `FluxPipeline`).

Text encoding and decoding run on Flux's modular blocks. The modular denoise block has no true
classifier-free guidance (negative prompt with `true_cfg_scale` > 1), so the denoise stage runs
FluxPipeline's own loop, loaded with only the transformer and scheduler, on the same named tensors.
Negative embeddings exist only for rows with `true_cfg_scale` > 1: Flux.1-dev is guidance-distilled
(`guidance_scale` is an input of the transformer, not a second pass).
"""

from __future__ import annotations

from dataclasses import replace

from latentmill.models import tensors
from latentmill.models.base import EncodedPrompts, cpu_generator
from latentmill.models.modular import ModularFamily
from latentmill.models.standard import load_partial_pipeline

TRUE_CFG = "true_cfg_scale"
MAX_SEQUENCE_LENGTH = "max_sequence_length"


class Flux(ModularFamily):
    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    blocks_class = "FluxAutoBlocks"
    prompt_tokenizer = "tokenizer_2"
    guider_parameter = TRUE_CFG
    defaults = {"num_inference_steps": 28, "guidance_scale": 3.5, "height": 1024, "width": 1024, "fps": 0.0}
    extra_parameters = {TRUE_CFG: (float, 1.0), MAX_SEQUENCE_LENGTH: (int, 512)}

    def size_multiple(self) -> int:
        return 2 * self.vae_scale_factor()  # latents are packed in 2x2 patches

    def conditioning_columns(self) -> tuple[str, ...]:
        positive = super().conditioning_columns()
        return positive + tuple(f"negative_{name}" for name in positive)

    def encode(self, requests):
        encoded = super().encode(requests)  # the blocks encode positives only
        rows = [i for i, request in enumerate(requests) if self.needs_negative(request)]
        if rows:
            negatives = super().encode([replace(requests[i], prompt=requests[i].negative_prompt) for i in rows])
            for name, values in negatives.tensors.items():
                if not name.startswith("negative_"):
                    for i, value in zip(rows, values):
                        encoded.tensors[f"negative_{name}"][i] = value
        return EncodedPrompts(tensors=encoded.tensors, truncated=encoded.truncated)

    def load_denoiser(self, device, dtype) -> None:
        self.denoise_pipe = load_partial_pipeline(self.model_dir, ("transformer", "scheduler"), dtype, device)
        self.denoise_pipe.vae_scale_factor = self.vae_scale_factor()  # without its VAE it would assume 8
        self.denoise_dtype = dtype

    def latent_shape(self, request) -> tuple[int, ...]:
        """Unpacked noise as FluxPipeline draws it: a quarter of the transformer's (packed) channels."""
        factor = 2 * self.vae_scale_factor()
        channels = self.component_config("transformer")["in_channels"] // 4
        return (channels, 2 * (request.height // factor), 2 * (request.width // factor))

    def noise_input(self, noise, requests):
        import torch
        from diffusers import FluxPipeline

        batch = torch.stack([torch.from_numpy(row) for row in noise])
        channels, height, width = batch.shape[1:]
        return FluxPipeline._pack_latents(batch, len(noise), channels, height, width)

    def denoise(self, requests, conditioning, noise=None):
        import torch
        from diffusers import FluxPipeline

        pipe, first = self.denoise_pipe, requests[0]
        embeds = {name: tensors.stack_rows(rows).to(pipe.device, self.denoise_dtype)
                  for name, rows in conditioning.items() if all(row is not None for row in rows)}
        if noise is not None:
            embeds["latents"] = self.noise_input(noise, requests).to(pipe.device, self.denoise_dtype)
        with torch.inference_mode():
            packed = pipe(
                **embeds,
                true_cfg_scale=first.extra(TRUE_CFG),
                guidance_scale=first.guidance_scale,
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                generator=[cpu_generator(r.seed) for r in requests],
                output_type="latent",
                return_dict=False,
            )[0]
            latents = FluxPipeline._unpack_latents(packed, first.height, first.width, self.vae_scale_factor())
        return [row.float().cpu().numpy() for row in latents]
