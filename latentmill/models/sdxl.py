"""Stable Diffusion XL checkpoints (diffusers `StableDiffusionXLPipeline`) on SDXL's modular blocks."""

from __future__ import annotations

from latentmill.models.modular import ModularFamily


class StableDiffusionXL(ModularFamily):
    name = "stable-diffusion-xl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    blocks_class = "StableDiffusionXLAutoBlocks"
    prompt_tokenizer = "tokenizer_2"
    defaults = {"num_inference_steps": 30, "guidance_scale": 5.0, "height": 1024, "width": 1024, "fps": 0.0}

    def size_multiple(self) -> int:
        return self.vae_scale_factor()
