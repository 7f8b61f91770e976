"""LTX-2 video-with-audio checkpoints (diffusers `LTX2Pipeline`) on its modular blocks.

The encode stage runs Gemma 3 and the text connectors (the blocks' `text_encoder` sub-block), so what
crosses to the denoise pool is the connectors' video and audio conditioning with its mask, not Gemma's
hidden states of every layer (for the real 12B encoder about 0.4 GB per prompt). The denoise stage runs
the blocks' joint loop: one transformer denoises the video and the audio latents together, each row
drawing its video noise and then its audio noise from its own generator, as the plain pipeline does.
Guidance is the pipeline's: classifier-free, spatio-temporal and modality-isolation guidance with
rescaling, the audio with its own `audio_guidance_scale`. The decode stage turns the video latents into
frames with the video VAE and the audio latents into a waveform with the audio VAE and the vocoder.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from latentmill import schema
from latentmill.models import tensors
from latentmill.models.base import AudioTrack, TemporalVAEFamily, cpu_generator
from latentmill.models.ltx import ltx_vae_factors
from latentmill.models.modular import ModularFamily
from latentmill.rows import Request

AUDIO_LATENTS = "audio_latents"
AUDIO_GUIDANCE = "audio_guidance_scale"
MAX_SEQUENCE_LENGTH = "max_sequence_length"
# The connectors' outputs: video and audio conditioning and their mask, for the prompt and the negative prompt.
CONDITIONING = ("connector_prompt_embeds", "connector_audio_prompt_embeds", "connector_attention_mask")
NEGATIVE_CONDITIONING = tuple(f"negative_{name}" for name in CONDITIONING)


class LTX2(TemporalVAEFamily, ModularFamily):
    name = "ltx-2"
    pipeline_classes = ("LTX2Pipeline",)
    blocks_class = "LTX2Blocks"  # text-to-video; diffusers exports only the auto blocks at the top level
    is_video = True
    interpolates = False  # interpolation would need each row's audio noise too
    has_audio = True
    extra_latent_columns = (AUDIO_LATENTS,)
    # The plain pipeline's own defaults (121 frames at 24 fps, 512 x 768).
    defaults = {"num_inference_steps": 30, "guidance_scale": 3.0, "height": 512, "width": 768, "num_frames": 121,
                "fps": 24.0}
    extra_parameters = {AUDIO_GUIDANCE: (float, 7.0), MAX_SEQUENCE_LENGTH: (int, 1024)}

    @cached_property
    def blocks(self):
        from diffusers.modular_pipelines.ltx2 import LTX2Blocks

        return LTX2Blocks()

    # ---- rules --------------------------------------------------------------------------------

    def vae_factors(self) -> tuple[int, int]:
        return ltx_vae_factors(self.component_config("vae"))

    def needs_negative(self, request: Request) -> bool:
        # The pipeline guides both modalities in one pass when either scale asks for it.
        return request.guidance_scale > 1 or request.extra(AUDIO_GUIDANCE) > 1

    def denoise_group_key(self, request: Request) -> tuple:
        # The frame rate positions the video in time and decides the audio's length.
        return (*super().denoise_group_key(request), request.fps)

    def conditioning_columns(self) -> tuple[str, ...]:
        return (*CONDITIONING, *NEGATIVE_CONDITIONING)

    # ---- denoise ------------------------------------------------------------------------------

    def load_denoiser(self, device, dtype) -> None:
        super().load_denoiser(device, dtype)
        # The loop reads the video VAE's compression from it (else 32x and 8x, whatever the checkpoint).
        self.denoise_pipe.vae = self._weightless("vae")

    def denoise(self, requests, conditioning, noise=None):
        import torch

        if noise is not None:
            raise NotImplementedError("the ltx-2 family does not support explicit initial noise")
        pipe, first = self.denoise_pipe, requests[0]
        kwargs: dict[str, Any] = {}
        for name, negative in zip(CONDITIONING, NEGATIVE_CONDITIONING):
            kwargs[name] = tensors.to_stage(tensors.stack_rows(conditioning[name]), pipe.device, self.denoise_dtype)
            rows = conditioning[negative]
            # Without guidance no pass reads the negatives, but the loop requires them: the positives stand in.
            kwargs[negative] = (tensors.to_stage(tensors.stack_rows(rows), pipe.device, self.denoise_dtype)
                                if all(row is not None for row in rows) else kwargs[name])
        self._set_guiders(first)
        with torch.inference_mode():
            state = pipe(
                generator=[cpu_generator(r.seed) for r in requests],
                batch_size=len(requests),
                dtype=self.denoise_dtype,
                height=first.height,
                width=first.width,
                num_frames=first.num_frames,
                frame_rate=first.fps,
                num_inference_steps=first.num_inference_steps,
                output=[schema.LATENTS, AUDIO_LATENTS, "audio_num_frames"],
                **kwargs,
            )
        video = self._unpack_video(state[schema.LATENTS], first)
        audio = self._unpack_audio(state[AUDIO_LATENTS], state["audio_num_frames"])
        return [{schema.LATENTS: v, AUDIO_LATENTS: a} for v, a in zip(video.float().cpu().numpy(),
                                                                       audio.float().cpu().numpy())]

    def _set_guiders(self, request: Request) -> None:
        """The video guider at the row's guidance_scale, the audio guider at its audio_guidance_scale."""
        pipe = self.denoise_pipe
        for component, scale in (("guider", request.guidance_scale), ("audio_guider", request.extra(AUDIO_GUIDANCE))):
            guider = getattr(pipe, component)
            if guider.config.get("guidance_scale") != scale:
                pipe.update_components(**{component: guider.new(guidance_scale=scale)})

    def _latent_grid(self, request: Request) -> tuple[int, int, int]:
        temporal, spatial = self.vae_factors()
        return (request.num_frames - 1) // temporal + 1, request.height // spatial, request.width // spatial

    def _unpack_video(self, packed, request: Request):
        """Tokens (B, S, D) -> normalised latents (B, C, F, H, W), the layout the decode stage takes."""
        from diffusers import LTX2Pipeline

        config = self.component_config("transformer")
        patch, patch_t = config.get("patch_size", 1), config.get("patch_size_t", 1)
        frames, height, width = self._latent_grid(request)
        return LTX2Pipeline._unpack_latents(packed, frames // patch_t, height // patch, width // patch, patch, patch_t)

    def _unpack_audio(self, packed, audio_frames: int):
        """Tokens (B, L, C * M) -> normalised audio latents (B, C, L, M)."""
        from diffusers import LTX2Pipeline

        mel_bins = self.component_config("audio_vae")["mel_bins"] // 4  # the audio VAE's fixed 4x mel compression
        return LTX2Pipeline._unpack_audio_latents(packed, audio_frames, num_mel_bins=mel_bins)

    # ---- decode -------------------------------------------------------------------------------

    def load_decoder(self, device, dtype) -> None:
        from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
        from diffusers.video_processor import VideoProcessor

        vocoder_class = LTX2VocoderWithBWE if self.index["vocoder"][1] == "LTX2VocoderWithBWE" else LTX2Vocoder
        self.vae = AutoencoderKLLTX2Video.from_pretrained(self.model_dir, subfolder="vae", dtype=dtype).to(device)
        if any(np.atleast_1d(self.vae.config.decoder_inject_noise)):
            raise ValueError("this LTX-2 video VAE injects noise while decoding, which latentmill does not "
                             "reproduce yet; use a checkpoint whose vae config has decoder_inject_noise all false")
        self.audio_vae = AutoencoderKLLTX2Audio.from_pretrained(self.model_dir, subfolder="audio_vae",
                                                                dtype=dtype).to(device)
        self.vocoder = vocoder_class.from_pretrained(self.model_dir, subfolder="vocoder", dtype=dtype).to(device)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor())

    def loaded_modules(self) -> dict[str, Any]:
        found = super().loaded_modules()
        for name in ("vae", "audio_vae", "vocoder"):
            if getattr(self, name, None) is not None:
                found[name] = getattr(self, name)
        return found

    def decode(self, latents: np.ndarray, requests: list[Request]) -> np.ndarray:
        """The plain pipeline's video decode with its default decode_timestep 0 (no decode noise)."""
        import torch
        from diffusers import LTX2Pipeline

        vae = self.vae
        with torch.inference_mode():
            x = torch.from_numpy(latents).to(vae.device, torch.float32)
            x = LTX2Pipeline._denormalize_latents(x, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
            timestep = None
            if vae.config.timestep_conditioning:
                timestep = torch.zeros(len(requests), device=x.device, dtype=torch.float32)
            video = vae.decode(x.to(vae.dtype), timestep, return_dict=False)[0]
            frames = self.video_processor.postprocess_video(video, output_type="np")
        return np.asarray(frames, dtype=np.float32)

    def decode_audio(self, latents: dict[str, np.ndarray], requests: list[Request]) -> list[AudioTrack]:
        """The audio VAE's mel spectrogram, then the vocoder's waveform, as the plain pipeline makes them."""
        import torch
        from diffusers import LTX2Pipeline

        audio_vae = self.audio_vae
        with torch.inference_mode():
            x = torch.from_numpy(latents[AUDIO_LATENTS]).to(audio_vae.device, torch.float32)
            _, _, frames, mel_bins = x.shape
            packed = LTX2Pipeline._pack_audio_latents(x)  # the statistics are per packed feature
            packed = LTX2Pipeline._denormalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)
            x = LTX2Pipeline._unpack_audio_latents(packed, frames, num_mel_bins=mel_bins)
            mel = audio_vae.decode(x.to(audio_vae.dtype), return_dict=False)[0]
            waveforms = self.vocoder(mel).float().cpu().numpy()
        rate = int(self.vocoder.config.output_sampling_rate)
        return [AudioTrack(samples=waveform, sample_rate=rate) for waveform in waveforms]

    # ---- reference ----------------------------------------------------------------------------

    def reference_kwargs(self, request: Request) -> dict[str, Any]:
        return {**super().reference_kwargs(request), "frame_rate": request.fps}

    def reference_generate_with_audio(self, pipe, request: Request) -> tuple[np.ndarray, AudioTrack]:
        """Frames (F, H, W, 3) and the sound track from the plain pipeline with the same parameters."""
        output = self.reference_output(pipe, request)
        track = AudioTrack(samples=output.audio[0].float().cpu().numpy(),
                           sample_rate=int(pipe.vocoder.config.output_sampling_rate))
        return np.asarray(output.frames[0], dtype=np.float32), track
