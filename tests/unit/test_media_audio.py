"""A video's sound track in its MP4: an AAC stream next to the H.264 one, as long as the samples given."""

import io

import numpy as np
import pytest

from latentmill.io import media

FRAMES = np.zeros((9, 32, 32, 3), dtype=np.uint8)


def tone(channels: int, seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
def test_mp4_holds_the_video_and_an_aac_stream_of_the_given_length(channels):
    import av

    sound = tone(channels, 0.33)
    data = media.encode_video(FRAMES, 25.0, "mp4", audio=sound, sample_rate=16000)
    with av.open(io.BytesIO(data)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert (audio.sample_rate, audio.layout.nb_channels) == (16000, channels)
        assert float(audio.duration * audio.time_base) == pytest.approx(0.33, abs=1e-3)
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio)], axis=1)
    assert np.corrcoef(decoded[:, :sound.shape[1]].ravel(), sound.ravel())[0, 1] > 0.99
    assert media.decode_video(data).shape == FRAMES.shape
    assert data[4:8] == b"ftyp"


def test_sound_it_cannot_carry_or_encode_is_refused():
    with pytest.raises(ValueError, match="apng cannot carry sound"):
        media.encode_video(FRAMES, 25.0, "apng", audio=tone(2, 0.3), sample_rate=16000)
    with pytest.raises(ValueError, match="1 or 2 channels"):
        media.encode_video(FRAMES, 25.0, "mp4", audio=tone(3, 0.3), sample_rate=16000)
    with pytest.raises(ValueError, match="finite float samples"):
        media.encode_video(FRAMES, 25.0, "mp4", audio=np.full((2, 100), np.nan, np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate"):
        media.encode_video(FRAMES, 25.0, "mp4", audio=tone(2, 0.3), sample_rate=None)
    assert media.carries_audio("MP4") and not media.carries_audio("apng")
