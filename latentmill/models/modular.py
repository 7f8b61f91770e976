"""The generic family: any checkpoint whose pipeline has a Modular Diffusers block set.

diffusers' block sets (`FluxAutoBlocks`, `StableDiffusionXLAutoBlocks`, ...) have sub-blocks that are
exactly latentmill's stages: `text_encoder`, `denoise`, `decode`. Each declares the components it
needs (`expected_components`), the values it takes (`inputs`) and the values it produces
(`intermediate_outputs`). So the model, not this module, says what each actor loads and which named
tensors cross from the encode pool to the denoise pool. A family file subclasses `ModularFamily` only
for what the blocks do not say: which pipeline classes, defaults, validation rules, extra per-row
parameters.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from latentmill import schema
from latentmill.models import tensors
from latentmill.models.base import DENOISER_COMPONENTS, EncodedPrompts, Family, cpu_generator
from latentmill.rows import Request

# latentmill stage -> the sub-block of a modular block set that runs it
STAGE_BLOCKS = {schema.STAGE_ENCODE: "text_encoder", schema.STAGE_DENOISE: "denoise", schema.STAGE_DECODE: "decode"}


class StageLoadError(RuntimeError):
    """A stage's components could not be loaded from the checkpoint."""


class ModularFamily(Family):
    interpolates = True
    blocks_class: ClassVar[str]  # name in diffusers.modular_pipelines
    prompt_tokenizer: ClassVar[str] = "tokenizer"  # the tokenizer whose limit decides `prompt_truncated`
    # The request parameter the guider's scale comes from (classifier-free guidance with negatives).
    guider_parameter: ClassVar[str] = schema.GUIDANCE
    # Further settings of the guider (classifier-free guidance) the plain pipeline's formula needs.
    guider_options: ClassVar[dict[str, Any]] = {}
    # Conditioning the denoise block takes as a list of per-row tensors (variable length, no padding).
    list_columns: ClassVar[tuple[str, ...]] = ()

    # ---- what the blocks declare (cheap: no weights) ---------------------------------------------

    @cached_property
    def blocks(self):
        import diffusers.modular_pipelines

        return getattr(diffusers.modular_pipelines, self.blocks_class)()

    def stage_block(self, stage: str):
        return self.blocks.sub_blocks[STAGE_BLOCKS[stage]]

    def stage_components(self, stage: str) -> list[str]:
        """The checkpoint components a stage's actor loads: its sub-block's components that the checkpoint
        holds (pretrained ones, and configured ones it ships, e.g. a guider with the model's guidance)."""
        specs = self.stage_block(stage).expected_components
        return [spec.name for spec in specs if spec.name in self.index]

    def conditioning_columns(self) -> tuple[str, ...]:
        produced = [output.name for output in self.stage_block(schema.STAGE_ENCODE).intermediate_outputs]
        consumed = set(self.stage_block(schema.STAGE_DENOISE).input_names)
        return tuple(name for name in produced if name in consumed)

    def guider_scale(self, request: Request) -> float:
        return float(dict(request.extras).get(self.guider_parameter, request.guidance_scale))

    def needs_negative(self, request: Request) -> bool:
        return self.guider_scale(request) > 1

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("blocks", None)  # rebuilt where needed
        return state

    # ---- loading ----------------------------------------------------------------------------------

    def _load_stage(self, stage: str, device, dtype):
        """A pipeline of the stage's sub-block holding only that stage's weights.

        The denoise blocks also ask for the VAE (and some for a text encoder) just to read their
        configs (scale factors, latent channels); those get a weightless stand-in with the real config,
        so the denoise actor holds no VAE or text-encoder weights and still derives the checkpoint's
        own factors instead of the blocks' defaults.
        """
        pipe = self.stage_block(stage).init_pipeline(str(self.model_dir))
        names = self.stage_components(stage)
        borrowed = []
        if stage == schema.STAGE_DENOISE:
            others = set(self.stage_components(schema.STAGE_ENCODE)) | set(self.stage_components(schema.STAGE_DECODE))
            borrowed = [name for name in names if name in others]
            names = [name for name in names if name not in others]
        pipe.load_components(names=names, dtype=dtype)  # logs instead of raising on a broken component
        missing = [name for name in names if getattr(pipe, name, None) is None]
        if missing:
            raise StageLoadError(
                f"component(s) {', '.join(missing)} of {self.model_dir} could not be loaded for the {stage} stage"
            )
        pipe.to(device)
        for name in borrowed:
            setattr(pipe, name, self._weightless(name))
        _quiet_progress(pipe._blocks)  # `pipe.blocks` is a copy
        return pipe

    def _weightless(self, component: str):
        """The component's module built from its config on the meta device: attributes, no weights."""
        import accelerate
        import diffusers

        library, class_name = self.index[component]
        module = diffusers if library == "diffusers" else __import__(library)
        cls = getattr(module, class_name)
        with accelerate.init_empty_weights():
            if library == "diffusers":
                return cls.from_config(cls.load_config(self.model_dir, subfolder=component))
            return cls._from_config(cls.config_class.from_pretrained(self.model_dir / component))

    def loaded_modules(self) -> dict[str, Any]:
        import torch

        found = {}
        for attribute in ("encode_pipe", "denoise_pipe", "decode_pipe"):
            pipe = getattr(self, attribute, None)
            for name, module in (pipe.components if pipe is not None else {}).items():
                if isinstance(module, torch.nn.Module) and any(not p.is_meta for p in module.parameters()):
                    found[name] = module
        return found

    def _set_guider(self, pipe, request: Request) -> None:
        """Classifier-free guidance on exactly when the plain pipeline would use it (`needs_negative`)."""
        guider = getattr(pipe, "guider", None)
        if guider is None:
            return
        wanted = {"guidance_scale": self.guider_scale(request), "enabled": self.needs_negative(request),
                  **self.guider_options}
        if any(guider.config.get(key) != value for key, value in wanted.items()):
            pipe.update_components(guider=guider.new(**wanted))

    def _call_kwargs(self, stage: str, request: Request) -> dict[str, Any]:
        """The row's extra parameters that this stage's block takes as inputs."""
        accepted = set(self.stage_block(stage).input_names)
        return {name: value for name, value in request.extras if name in accepted}

    # ---- encode -----------------------------------------------------------------------------------

    def load_encoder(self, device, dtype) -> None:
        self.encode_pipe = self._load_stage(schema.STAGE_ENCODE, device, dtype)

    def encode(self, requests: list[Request]) -> EncodedPrompts:
        import torch

        columns = self.conditioning_columns()
        produced = {output.name for output in self.stage_block(schema.STAGE_ENCODE).intermediate_outputs}
        outputs = [name for name in columns if name in produced]
        out: dict[str, list[np.ndarray | None]] = {name: [None] * len(requests) for name in columns}
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            key = (self.needs_negative(request), tuple(sorted(self._call_kwargs(schema.STAGE_ENCODE, request).items())))
            groups.setdefault(key, []).append(i)
        accepts_negative = "negative_prompt" in self.stage_block(schema.STAGE_ENCODE).input_names
        for (with_negative, _), rows in groups.items():
            first = requests[rows[0]]
            self._set_guider(self.encode_pipe, first)
            kwargs = self._call_kwargs(schema.STAGE_ENCODE, first)
            if with_negative and accepts_negative:
                kwargs["negative_prompt"] = [requests[i].negative_prompt for i in rows]
            with torch.inference_mode():
                state = self.encode_pipe(prompt=[requests[i].prompt for i in rows], output=outputs, **kwargs)
            for name in outputs:
                if name.startswith("negative_") and not with_negative:
                    continue  # never shipped for rows whose guidance does not use them
                for i, value in zip(rows, tensors.rows_of(state.get(name), len(rows))):
                    out[name][i] = value
        return EncodedPrompts(tensors=out, truncated=self.prompts_truncated(requests))

    def prompts_truncated(self, requests: list[Request]) -> list[bool]:
        """Which prompts the main text encoder cuts (they still run; the manifest flags them)."""
        tokenizer = getattr(self.encode_pipe, self.prompt_tokenizer, None)
        if tokenizer is None:
            return [False] * len(requests)
        flags = []
        for request in requests:
            limit = dict(request.extras).get("max_sequence_length", tokenizer.model_max_length)
            ids = tokenizer(request.prompt, truncation=False, add_special_tokens=True)["input_ids"]
            flags.append(len(ids) > limit)
        return flags

    # ---- denoise ----------------------------------------------------------------------------------

    def load_denoiser(self, device, dtype) -> None:
        self.denoise_pipe = self._load_stage(schema.STAGE_DENOISE, device, dtype)
        self.denoise_dtype = dtype

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        """The unpacked shape of one row's initial noise: the denoiser's channels at the VAE's scale."""
        denoiser = next(name for name in DENOISER_COMPONENTS if name in self.configs)
        factor = self.vae_scale_factor()
        return (self.configs[denoiser]["in_channels"], request.height // factor, request.width // factor)

    def initial_noise(self, request: Request) -> np.ndarray:
        import torch

        drawn = torch.randn((1, *self.latent_shape(request)), generator=cpu_generator(request.seed))
        return drawn[0].numpy()

    def noise_input(self, noise: list[np.ndarray], requests: list[Request]):
        """Rows' initial noise in the form the denoise blocks take as `latents` (unpacked here)."""
        import torch

        return torch.stack([torch.from_numpy(row) for row in noise])

    def denoise(self, requests, conditioning, noise=None):
        import torch

        pipe, first = self.denoise_pipe, requests[0]
        kwargs: dict[str, Any] = {}
        if noise is not None:
            kwargs[schema.LATENTS] = self.noise_input(noise, requests).to(pipe.device, self.denoise_dtype)
        for name, rows in conditioning.items():
            if any(row is None for row in rows):
                continue  # e.g. negatives of rows without guidance: the group has none
            if name in self.list_columns:
                kwargs[name] = [tensors.to_stage(tensors.to_torch(row), pipe.device, self.denoise_dtype) for row in rows]
            else:
                kwargs[name] = tensors.to_stage(tensors.stack_rows(rows), pipe.device, self.denoise_dtype)
        accepted = set(self.stage_block(schema.STAGE_DENOISE).input_names)
        if schema.GUIDANCE in accepted:
            kwargs[schema.GUIDANCE] = first.guidance_scale
        if self.is_video:
            kwargs[schema.NUM_FRAMES] = first.num_frames
        kwargs.update(self._call_kwargs(schema.STAGE_DENOISE, first))
        self._set_guider(pipe, first)
        with torch.inference_mode():
            latents = pipe(
                generator=[cpu_generator(r.seed) for r in requests],
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                output=schema.LATENTS,
                **kwargs,
            )
        return [row.float().cpu().numpy() for row in latents]

    # ---- decode -----------------------------------------------------------------------------------

    def load_decoder(self, device, dtype) -> None:
        self.decode_pipe = self._load_stage(schema.STAGE_DECODE, device, dtype)
        self.vae = self.decode_pipe.vae

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        import torch

        pipe, first = self.decode_pipe, requests[0]
        block = self.stage_block(schema.STAGE_DECODE)
        accepted = set(block.input_names)
        kwargs = {name: getattr(first, name) for name in (schema.HEIGHT, schema.WIDTH) if name in accepted}
        output = "videos" if self.is_video else "images"
        with torch.inference_mode():
            # in the VAE's dtype, as the plain pipeline hands its own latents over (its blocks upcast float16 VAEs)
            frames = pipe(latents=torch.from_numpy(latents).to(pipe.device, self.vae.dtype), output_type="np",
                          output=output, **kwargs)
        frames = np.asarray(frames, dtype=np.float32)
        return frames if self.is_video else frames[:, None]


def _quiet_progress(block) -> None:
    """No per-step progress bars in the job log (diffusers' own switch reaches only the top level)."""
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for sub_block in getattr(block, "sub_blocks", {}).values():
        _quiet_progress(sub_block)
