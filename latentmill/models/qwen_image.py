"""Qwen-Image checkpoints (diffusers `QwenImagePipeline`) on Qwen-Image's modular blocks.

Its classifier-free guidance is `true_cfg_scale` (with a negative prompt; "" counts); `guidance_scale`
matters only to guidance-distilled transformers. Prompt embeddings vary in length (padded to the
batch's longest, with `prompt_embeds_mask`): each row travels at its encoded length with its mask,
and the denoise stage pads a group to its longest, as the encoder itself does.
"""

from __future__ import annotations

from latentmill.models.modular import ModularFamily

TRUE_CFG = "true_cfg_scale"


class QwenImage(ModularFamily):
    name = "qwen-image"
    pipeline_classes = ("QwenImagePipeline",)
    blocks_class = "QwenImageAutoBlocks"
    guider_parameter = TRUE_CFG
    defaults = {"num_inference_steps": 50, "guidance_scale": 1.0, "height": 1328, "width": 1328, "fps": 0.0}
    # max_sequence_length: the blocks' own default is 1024, QwenImagePipeline's 512.
    extra_parameters = {TRUE_CFG: (float, 4.0), "max_sequence_length": (int, 512)}

    def size_multiple(self) -> int:
        return 16  # 8x VAE, 2x2 patches

    def reference_kwargs(self, request):
        kwargs = super().reference_kwargs(request)
        if not self.component_config("transformer").get("guidance_embeds"):
            kwargs["guidance_scale"] = None  # the pipeline only warns about a scale it ignores
        return kwargs

    interpolates = False

    def initial_noise(self, request):
        raise NotImplementedError("latent interpolation does not support Qwen-Image (packed 5-D latents) yet")
