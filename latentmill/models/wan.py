"""Wan text-to-video checkpoints (diffusers `WanPipeline`): Wan 2.1; Wan 2.2 A14B, whose high-noise
`transformer` hands over to the low-noise `transformer_2` at `boundary_ratio`, each with its own guidance
scale, either both experts in each denoise actor or one expert per denoise pool (stages.denoise_2, the
latents and the scheduler's state handed from the first pool to the second); Wan 2.2 TI2V-5B (`expand_timesteps`: one timestep
per latent token, and a VAE with 16x spatial compression whose factors the denoise stage must take from
the checkpoint, as it holds no VAE)."""

from __future__ import annotations

from typing import Any

import numpy as np

from latentmill.models import tensors
from latentmill.models.base import TemporalVAEFamily, cpu_generator
from latentmill.models.standard import NEGATIVE_PROMPT_EMBEDS, PROMPT_EMBEDS, StandardFamily, load_partial_pipeline
from latentmill.rows import Request

EXPERTS = ("transformer", "transformer_2")  # high noise (the steps from the start), low noise (the rest)
# Schedulers whose whole step-to-step state latentmill hands from one denoise pool to the next. A multistep
# solver cannot restart at the boundary: UniPC's next step uses its last model outputs (order 2), the
# corrector its last sample and order. Re-deriving them would need the first expert again.
HANDOVER_SCHEDULERS = ("UniPCMultistepScheduler",)

class Wan(TemporalVAEFamily, StandardFamily):
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

    def vae_factors(self) -> tuple[int, int]:
        config = self.component_config("vae")
        return config.get("scale_factor_temporal", 4), config.get("scale_factor_spatial", 8)

    def size_multiple(self) -> int:
        patch = self.component_config("transformer")["patch_size"]
        return max(16, self.vae_scale_factor() * max(patch[1], patch[2]))

    def latent_shape(self, request: Request) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors()
        channels = self.component_config("transformer")["in_channels"]
        latent_frames = (request.num_frames - 1) // temporal + 1
        return (channels, latent_frames, request.height // spatial, request.width // spatial)

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        # Without its VAE the pipeline would assume 4x temporal and 8x spatial; use the checkpoint's own.
        pipe = self.denoise_pipe
        pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = self.vae_factors()

    def denoise_split_problem(self) -> str | None:
        if not self.two_experts():
            return super().denoise_split_problem()
        scheduler = self.scheduler_name()
        if scheduler not in HANDOVER_SCHEDULERS:
            return (f"its scheduler {scheduler} is not one whose state can be handed between pools "
                    f"({', '.join(HANDOVER_SCHEDULERS)}); put both experts in each denoise actor instead")
        return None

    def load_denoiser_expert(self, device, dtype, expert: int) -> None:
        self.denoise_pipe = load_partial_pipeline(self.model_dir, (EXPERTS[expert], "scheduler"), dtype, device)
        self.denoise_dtype = dtype

    def denoise_first_expert(self, requests, conditioning):
        import torch

        noise = torch.cat([torch.randn((1, *self.latent_shape(r)), generator=cpu_generator(r.seed),
                                       dtype=torch.float32) for r in requests])
        latents = self._expert_steps(0, requests, conditioning, noise.to(self.denoise_pipe.device))
        scheduler = self.denoise_pipe.scheduler
        # (a fresh scheduler's counters where no step was above the boundary: read only after a step)
        shared = {"step_index": np.array(scheduler.step_index or 0),
                  "lower_order_nums": np.array(scheduler.lower_order_nums),
                  "this_order": np.array(getattr(scheduler, "this_order", 0)),
                  "timestep_list": np.array([np.nan if t is None else float(t) for t in scheduler.timestep_list])}
        per_row = {"latents": latents, "last_sample": scheduler.last_sample}
        per_row |= {f"model_output_{i}": output for i, output in enumerate(scheduler.model_outputs)
                    if output is not None}
        return [tensors.pack_named({**shared, **{name: tensors.to_numpy(value[row]) for name, value in per_row.items()}})
                for row in range(len(requests))]

    def denoise_second_expert(self, requests, conditioning, handover):
        import torch

        rows = [tensors.unpack_named(data) for data in handover]
        device = self.denoise_pipe.device

        def stacked(name: str):
            return torch.stack([tensors.to_torch(row[name]) for row in rows]).to(device)

        def resume(scheduler) -> None:
            first = rows[0]
            scheduler._step_index = int(first["step_index"])
            scheduler.lower_order_nums = int(first["lower_order_nums"])
            scheduler.this_order = int(first["this_order"])
            scheduler.timestep_list = [None if np.isnan(t) else torch.tensor(t, device=device)
                                       for t in first["timestep_list"]]
            scheduler.last_sample = stacked("last_sample")
            scheduler.model_outputs = [stacked(f"model_output_{i}") if f"model_output_{i}" in first else None
                                       for i in range(len(scheduler.model_outputs))]

        latents = self._expert_steps(1, requests, conditioning, stacked("latents"), resume)
        return list(latents.float().cpu().numpy())

    def _expert_steps(self, expert: int, requests, conditioning, latents, resume=None):
        """One expert's steps of WanPipeline's denoising loop (the same calls, in the same order), for rows
        of one denoise group; `resume` restores the scheduler's state at the handover."""
        import torch

        pipe, dtype = self.denoise_pipe, self.denoise_dtype
        model = getattr(pipe, EXPERTS[expert])
        first = requests[0]
        guided = first.guidance_scale > 1.0  # WanPipeline's do_classifier_free_guidance
        scale = first.guidance_scale if expert == 0 else first.extra("guidance_scale_2")
        embeds = tensors.to_stage(tensors.stack_rows(conditioning[PROMPT_EMBEDS]), pipe.device, dtype)
        negative = None
        if guided:
            negative = tensors.to_stage(tensors.stack_rows(conditioning[NEGATIVE_PROMPT_EMBEDS]), pipe.device, dtype)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(first.num_inference_steps, device=pipe.device)
        scheduler.set_begin_index(0)
        if resume is not None:
            resume(scheduler)
        boundary = pipe.config.boundary_ratio * scheduler.config.num_train_timesteps
        with torch.inference_mode():
            for t in scheduler.timesteps:
                if (t >= boundary) != (expert == 0):
                    continue
                timestep = t.expand(latents.shape[0])
                noise_pred = model(hidden_states=latents.to(dtype), timestep=timestep, encoder_hidden_states=embeds,
                                   attention_kwargs=None, return_dict=False)[0]
                if guided:
                    uncond = model(hidden_states=latents.to(dtype), timestep=timestep,
                                   encoder_hidden_states=negative, attention_kwargs=None, return_dict=False)[0]
                    noise_pred = uncond + scale * (noise_pred - uncond)
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return latents

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
