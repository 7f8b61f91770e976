"""LTX-2 through `latentmill run` on local Ray: MP4s with a video and an AAC sound stream of the same
length that sounds like the plain pipeline's waveform, the manifest's audio columns, error rows for frame
counts the model cannot make, and saved latents that decode again to the same MP4s."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

import latentmill
from latentmill import schema
from latentmill.models import resolve_model
from latentmill.rows import request_from

from tests.helpers import write_table
from tests.integration.test_cli_job import run_cli

pytestmark = pytest.mark.slow


def test_ltx2_run_writes_mp4s_with_sound(ray_local, tmp_path, capsys):
    import av

    rows = [{"prompt": "a cat sitting on a red sofa", "negative_prompt": "blurry"},
            {"prompt": "waves on a rocky beach", "fps": 12.0, "num_frames": 17, "seed": 7},
            {"prompt": "a river", "guidance_scale": 1.0, "audio_guidance_scale": 1.0},
            {"prompt": "ten frames", "num_frames": 10}]
    table = write_table(tmp_path / "prompts.parquet", rows)
    out = tmp_path / "out"
    result = run_cli(["--input", str(table), "--output", str(out), "--model", "builtin:tiny-ltx2"], tmp_path, capsys)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = {row[schema.PROMPT]: row for row in pq.read_table(out / "manifest").to_pylist()}
    assert sorted(manifest) == sorted(row["prompt"] for row in rows[:3])
    family = resolve_model("builtin:tiny-ltx2").family()
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for given in rows[:3]:
        row = manifest[given["prompt"]]
        assert row["model_family"] == "ltx-2" and row[schema.MIME_TYPE] == "video/mp4"
        assert (row[schema.AUDIO_SAMPLE_RATE], row[schema.AUDIO_CHANNELS]) == (16000, 2)
        assert all(type(row[name]) is int for name in (schema.AUDIO_SAMPLE_RATE, schema.AUDIO_CHANNELS))
        video_seconds = row[schema.NUM_FRAMES] / row[schema.FPS]
        assert abs(row[schema.AUDIO_SECONDS] - video_seconds) <= 0.08
        with av.open(io.BytesIO((out / "media" / row[schema.OUTPUT_URI].rsplit("/", 1)[1]).read_bytes())) as media:
            video, audio = media.streams.video[0], media.streams.audio[0]
            assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
            assert video.frames == row[schema.NUM_FRAMES]
            assert (video.codec_context.height, video.codec_context.width) == (row[schema.HEIGHT], row[schema.WIDTH])
            assert float(audio.duration * audio.time_base) == pytest.approx(row[schema.AUDIO_SECONDS], abs=1e-3)
            assert float(video.duration * video.time_base) == pytest.approx(video_seconds, abs=1e-3)
            sound = np.concatenate([frame.to_ndarray() for frame in media.decode(audio)], axis=1)
        # AAC is lossy: the decoded sound follows the plain pipeline's waveform closely, not exactly
        _, want = family.reference_generate_with_audio(pipe, request_from(row, tuple(family.extra_parameters)))
        got = sound[:, :want.samples.shape[1]]
        assert got.shape == want.samples.shape
        assert np.abs(got - want.samples).mean() < 0.01
        assert np.corrcoef(got.ravel(), want.samples.ravel())[0, 1] > 0.99

    errors = pq.read_table(out / "errors").to_pylist()
    assert len(errors) == 1 and errors[0][schema.ERROR_STAGE] == "validate"
    assert "8k+1" in errors[0][schema.ERROR_MESSAGE] and "use 9 or 17" in errors[0][schema.ERROR_MESSAGE]



def test_ltx2_saved_latents_decode_again_with_their_sound(ray_local, tmp_path):
    """The saved latents hold the sound's too: decoding them again (same batch size and threads) remakes the
    MP4, sound included, byte for byte."""
    from tests.helpers import generate

    table = write_table(tmp_path / "prompts.parquet", [{"prompt": "a lighthouse", "seed": 3}])
    generate(str(table), str(tmp_path / "run"), model="builtin:tiny-ltx2", batch_size=1,
             output={"save_latents": True})
    again = latentmill.decode(str(tmp_path / "run"), str(tmp_path / "decoded"), ray={"progress_bars": False},
                              stages={"decode": {"batch_size": 1, "num_cpus": 0.5, "torch_threads": 1}})
    assert (again.outputs_written, again.rows_failed) == (1, 0)
    [original] = pq.read_table(tmp_path / "run" / "manifest").to_pylist()
    [decoded] = pq.read_table(tmp_path / "decoded" / "manifest").to_pylist()
    assert decoded[schema.AUDIO_SECONDS] == original[schema.AUDIO_SECONDS] is not None
    assert decoded[schema.SHA256] == original[schema.SHA256]  # the same video and the same sound
