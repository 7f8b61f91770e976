"""Stable Diffusion 3 / 3.5 checkpoints (diffusers `StableDiffusion3Pipeline`) on SD3's modular blocks."""

from __future__ import annotations

from latentmill.models.modular import ModularFamily


class StableDiffusion3(ModularFamily):
    name = "stable-diffusion-3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    blocks_class = "StableDiffusion3AutoBlocks"
    prompt_tokenizer = "tokenizer_3"
    defaults = {"num_inference_steps": 28, "guidance_scale": 3.5, "height": 1024, "width": 1024, "fps": 0.0}
    extra_parameters = {"max_sequence_length": (int, 256)}

    def size_multiple(self) -> int:
        return self.vae_scale_factor() * self.component_config("transformer")["patch_size"]
