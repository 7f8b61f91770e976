"""Z-Image checkpoints (diffusers `ZImagePipeline`) on Z-Image's modular blocks.

Z-Image's embeddings are a list of per-prompt tensors of different lengths (padding dropped by the
encoder): each row travels at its own length, and the denoise stage hands the group back as a list.
Its guidance is on for any `guidance_scale` > 0 (pos + g * (pos - neg)).
"""

from __future__ import annotations

from latentmill.models.modular import ModularFamily


class ZImage(ModularFamily):
    name = "z-image"
    pipeline_classes = ("ZImagePipeline",)
    blocks_class = "ZImageAutoBlocks"
    defaults = {"num_inference_steps": 9, "guidance_scale": 0.0, "height": 1024, "width": 1024, "fps": 0.0}
    list_columns = ("prompt_embeds", "negative_prompt_embeds")
    guider_options = {"use_original_formulation": True}  # pos + g * (pos - neg), as ZImagePipeline

    def needs_negative(self, request) -> bool:
        return request.guidance_scale > 0

    def size_multiple(self) -> int:
        return 16

    interpolates = False

    def initial_noise(self, request):
        raise NotImplementedError("latent interpolation does not support Z-Image (its list embeddings cannot be blended) yet")
