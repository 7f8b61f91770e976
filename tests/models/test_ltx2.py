"""LTX-2 (video with sound) stage by stage, without Ray: each stage in its own family object holding only
its stage's weights, conditioning through the inter-stage packing, equals the plain `LTX2Pipeline` in
frames and waveform; the sound lands in the MP4 as AAC next to the video."""

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from latentmill.io import media
from latentmill.models import resolve_model, tensors
from latentmill.models.ltx2 import AUDIO_GUIDANCE, AUDIO_LATENTS
from latentmill.rows import Request

from tests.helpers import denoise_groups, loaded_stage_families


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["LATENTMILL_CACHE"] = str(tmp_path_factory.mktemp("ltx2-cache"))
    yield resolve_model("builtin:tiny-ltx2")
    torch.set_num_threads(threads)


def request(i: int, prompt: str, negative: str = "", **overrides) -> Request:
    row = {"num_inference_steps": 4, "guidance_scale": 3.0, "height": 64, "width": 64, "num_frames": 9,
           "fps": 25.0, AUDIO_GUIDANCE: 7.0, "max_sequence_length": 64, **overrides}
    extras = tuple(sorted((name, row[name]) for name in (AUDIO_GUIDANCE, "max_sequence_length")))
    return Request(f"r{i}", prompt, negative, 10 + i, row["num_inference_steps"], row["guidance_scale"],
                   row["height"], row["width"], row["num_frames"], row["fps"], extras)


ROWS = [
    request(0, "a cat sitting on a red sofa", "blurry"),
    request(1, "a dog running through the snow in slow motion at dawn, cinematic"),
    request(2, "waves on a rocky beach", "low quality", fps=12.0, num_frames=17),  # longer sound, own group
    request(3, "a river in a green valley", "ugly", guidance_scale=1.0, **{AUDIO_GUIDANCE: 1.0}),  # no guidance
]


# How much shorter or longer than its video the sound may be: the pipeline rounds the duration to whole
# audio latent frames (1/25 s each), and the causal audio VAE makes 4L - 3 mel frames (10 ms each) of L.
SOUND_SLACK = 1 / 25 / 2 + 3 * 0.01 + 1e-9


def run_stages(ref, requests: list[Request], batch_size: int, dtype_name: str = "float32"):
    """Frames, sound tracks and shipped conditioning per row; stages batch rows of one group `batch_size` at a time."""
    encoder, denoiser, decoder = loaded_stage_families(ref, dtype_name)
    encoded = encoder.encode(requests)
    frames, tracks = [None] * len(requests), [None] * len(requests)
    for members in denoise_groups(denoiser, requests):
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            conditioning = {name: [tensors.unpack(tensors.pack(values[i])) for i in rows]
                            for name, values in encoded.tensors.items()}
            batch = [requests[i] for i in rows]
            latents = denoiser.denoise(batch, conditioning)
            video = np.stack([named["latents"] for named in latents])
            audio = {AUDIO_LATENTS: np.stack([named[AUDIO_LATENTS] for named in latents])}
            for i, row_frames, track in zip(rows, decoder.decode(video, batch), decoder.decode_audio(audio, batch)):
                frames[i], tracks[i] = row_frames, track
    held = {"encode": set(encoder.loaded_modules()), "denoise": set(denoiser.loaded_modules()),
            "decode": set(decoder.loaded_modules())}
    return frames, tracks, encoded.tensors, held


@pytest.mark.parametrize("batch_size", [1, 2])
def test_stages_equal_plain_ltx2_pipeline_in_frames_and_sound(ref, batch_size):
    frames, tracks, conditioning, held = run_stages(ref, ROWS, batch_size)

    assert held == {"encode": {"text_encoder", "connectors"}, "denoise": {"transformer"},
                    "decode": {"vae", "audio_vae", "vocoder"}}
    for column, values in conditioning.items():  # negatives only where guidance uses them
        assert (values[3] is None) == column.startswith("negative_"), column

    family = ref.family()
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for r, got_frames, got_track in zip(ROWS, frames, tracks):
        want_frames, want_track = family.reference_generate_with_audio(pipe, r)
        assert got_frames.shape == want_frames.shape == (r.num_frames, r.height, r.width, 3)
        assert np.abs(got_frames - want_frames).max() <= 2 / 255, r.id
        assert got_track.sample_rate == want_track.sample_rate == 16000
        assert got_track.samples.shape == want_track.samples.shape, r.id
        assert np.abs(got_track.samples - want_track.samples).max() <= 1e-4, r.id
        assert np.abs(got_track.samples).max() > 1e-3  # a real waveform, not silence
        assert abs(got_track.seconds - r.num_frames / r.fps) <= SOUND_SLACK, r.id


def test_every_stage_runs_in_bfloat16_as_on_a_gpu(ref):
    full_frames, full_tracks, _, _ = run_stages(ref, ROWS[:2], 2)
    half_frames, half_tracks, _, _ = run_stages(ref, ROWS[:2], 2, "bfloat16")
    for full, half in zip(full_frames, half_frames):
        assert np.isfinite(half).all() and np.abs(half - full).mean() < 0.05
    for full, half in zip(full_tracks, half_tracks):
        assert half.samples.dtype == np.float32 and half.samples.shape == full.samples.shape
        assert np.isfinite(half.samples).all() and np.abs(half.samples - full.samples).mean() < 0.05


def test_the_mp4_carries_the_video_and_its_sound(ref):
    import av

    frames, tracks, _, _ = run_stages(ref, ROWS[:1], 1)
    track = tracks[0]
    data = media.encode_video(media.to_uint8(frames[0]), ROWS[0].fps, "mp4", audio=track.samples,
                              sample_rate=track.sample_rate)
    with av.open(io.BytesIO(data)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert (audio.sample_rate, audio.layout.nb_channels) == (16000, 2)
        video_seconds, audio_seconds = float(video.duration * video.time_base), float(audio.duration * audio.time_base)
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio)], axis=1)
    assert video_seconds == pytest.approx(ROWS[0].num_frames / ROWS[0].fps)
    assert audio_seconds == pytest.approx(track.seconds, abs=1e-3)
    assert abs(audio_seconds - video_seconds) <= SOUND_SLACK
    assert np.abs(decoded).max() > 1e-3
    assert media.decode_video(data).shape == (9, 64, 64, 3)


def test_rows_the_model_cannot_make_name_the_rule_and_a_valid_value(ref):
    from diffusers import AutoencoderKLLTX2Video

    family = ref.family()
    vae = AutoencoderKLLTX2Video.from_config(family.component_config("vae"))
    assert family.vae_factors() == (vae.temporal_compression_ratio, vae.spatial_compression_ratio) == (8, 32)
    assert family.check_request(ROWS[0]) is None
    frames = family.check_request(request(9, "x", num_frames=10))
    assert "8k+1" in frames and "use 9 or 17" in frames
    size = family.check_request(request(9, "x", height=48))
    assert "multiples of 32" in size
