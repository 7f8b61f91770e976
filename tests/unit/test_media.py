"""latentmill.io.media: image/video encoding round trips and diffusers-identical rounding."""

from __future__ import annotations

import io

import numpy as np
import pytest

from latentmill.io import media


def gradient_frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth, moving colour gradients (what lossy codecs reproduce closely)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(n):
        r = (x / max(w - 1, 1) * 200 + i * 4) % 256
        g = (y / max(h - 1, 1) * 200 + i * 2) % 256
        b = np.full_like(x, 60 + i * 3)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ formats


def test_format_tables():
    assert media.IMAGE_FORMATS["png"] == ("png", "image/png")
    assert media.IMAGE_FORMATS["jpeg"] == ("jpg", "image/jpeg")
    assert media.IMAGE_FORMATS["webp"] == ("webp", "image/webp")
    assert media.VIDEO_FORMATS["mp4"] == ("mp4", "video/mp4")
    assert media.VIDEO_FORMATS["apng"][1] == "image/apng"
    assert media.format_info("JPG") == media.IMAGE_FORMATS["jpeg"]
    with pytest.raises(ValueError, match="gif"):
        media.format_info("gif")


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize("shape", [(32, 32), (17, 29), (1, 1)])
def test_png_round_trip_is_exact(shape):
    frame = random_frames(1, *shape)[0]
    data = media.encode_image(frame, "png")
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(media.decode_image(data), frame)


@pytest.mark.parametrize(
    "fmt, magic", [("jpeg", b"\xff\xd8"), ("jpg", b"\xff\xd8"), ("webp", b"RIFF")]
)
def test_lossy_images_decode_to_the_right_size(fmt, magic):
    frame = gradient_frames(1, 48, 64)[0]
    data = media.encode_image(frame, fmt, quality=90)
    assert data.startswith(magic)
    decoded = media.decode_image(data)
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame).mean() < 4


def test_quality_changes_lossy_size():
    frame = random_frames(1, 64, 64)[0]
    assert len(media.encode_image(frame, "jpeg", quality=20)) < len(
        media.encode_image(frame, "jpeg", quality=95)
    )


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((2, 8, 8, 3), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_encode_image_validates_input(bad):
    with pytest.raises(ValueError):
        media.encode_image(bad, "png")  # type: ignore[arg-type]


def test_encode_image_validates_format_and_quality():
    frame = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="format"):
        media.encode_image(frame, "bmp")
    with pytest.raises(ValueError, match="format"):
        media.encode_image(frame, "mp4")
    with pytest.raises(ValueError, match="quality"):
        media.encode_image(frame, "jpeg", quality=0)


# ------------------------------------------------------------------------------ videos


@pytest.mark.parametrize("h, w", [(32, 32), (64, 48), (33, 47)])
def test_mp4_round_trip_frame_count_and_size(h, w):
    frames = gradient_frames(10, h, w)
    data = media.encode_video(frames, fps=8)
    assert data[4:8] == b"ftyp"
    decoded = media.decode_video(data)
    # Odd dimensions are padded to even (yuv420p), replicating the last row/column.
    assert decoded.shape == (10, h + h % 2, w + w % 2, 3)
    assert decoded.dtype == np.uint8
    err = np.abs(decoded[:, :h, :w].astype(int) - frames).mean()
    assert err < 6, err


def test_mp4_stream_properties():
    import av

    data = media.encode_video(gradient_frames(12, 32, 32), fps=24)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
        assert sum(1 for _ in container.decode(stream)) == 12


def test_mp4_fractional_fps():
    import av

    data = media.encode_video(gradient_frames(5, 16, 16), fps=30000 / 1001)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].average_rate == pytest.approx(29.97, abs=0.01)


def test_mp4_single_frame():
    assert media.decode_video(media.encode_video(gradient_frames(1, 16, 16), fps=1)).shape == (
        1,
        16,
        16,
        3,
    )


@pytest.mark.parametrize("h, w", [(32, 32), (33, 47), (1, 1)])
def test_apng_round_trip_is_pixel_exact(h, w):
    frames = random_frames(7, h, w, seed=h * w)
    frames[3] = frames[2]  # repeated frames must not be merged
    frames[4] = frames[2]
    data = media.encode_video(frames, fps=8, fmt="apng")
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(media.decode_video(data), frames)


def test_apng_frame_duration_and_single_frame():
    from PIL import Image

    data = media.encode_video(random_frames(3, 8, 8), fps=10, fmt="apng")
    with Image.open(io.BytesIO(data)) as img:
        assert img.n_frames == 3
        assert img.info["duration"] == pytest.approx(100)
    one = random_frames(1, 8, 8)
    assert np.array_equal(media.decode_video(media.encode_video(one, 5, "apng")), one)


@pytest.mark.parametrize(
    "frames, fps, fmt",
    [
        (np.zeros((2, 8, 8, 3), np.float32), 8, "mp4"),
        (np.zeros((8, 8, 3), np.uint8), 8, "mp4"),
        (np.zeros((0, 8, 8, 3), np.uint8), 8, "mp4"),
        (np.zeros((2, 8, 8, 3), np.uint8), 0, "mp4"),
        (np.zeros((2, 8, 8, 3), np.uint8), -1.0, "apng"),
        (np.zeros((2, 8, 8, 3), np.uint8), float("nan"), "apng"),
        (np.zeros((2, 8, 8, 3), np.uint8), 8, "gif"),
    ],
)
def test_encode_video_validates_input(frames, fps, fmt):
    with pytest.raises(ValueError):
        media.encode_video(frames, fps, fmt)


def test_decode_validates_input():
    with pytest.raises(ValueError):
        media.decode_video(b"")
    with pytest.raises(ValueError):
        media.decode_image(b"")


# ------------------------------------------------------------------------------ to_uint8


def test_diffusers_numpy_to_pil_still_uses_the_same_formula():
    """Cheap guard (no torch import): the installed diffusers still rounds like to_uint8."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("diffusers")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("diffusers not installed")
    source = (Path(list(spec.submodule_search_locations)[0]) / "image_processor.py").read_text()
    numpy_to_pil = source[source.index("def numpy_to_pil") :][:1500]
    assert 'images = (images * 255).round().astype("uint8")' in numpy_to_pil


@pytest.mark.slow  # imports diffusers, hence torch: seconds
def test_to_uint8_matches_diffusers_numpy_to_pil():
    image_processor = pytest.importorskip("diffusers.image_processor")
    rng = np.random.default_rng(7)
    x = rng.random((3, 16, 16, 3), dtype=np.float32)
    # Values on and next to the rounding boundaries k/255 +- half a step.
    k = np.arange(256, dtype=np.float32)
    edges = np.concatenate([k / 255, (k + 0.5) / 255, np.nextafter((k + 0.5) / 255, 0)])
    edges = np.clip(edges, 0, 1).astype(np.float32)
    x[0].reshape(-1)[: edges.size] = edges
    ours = media.to_uint8(x)
    theirs = np.stack(
        [np.asarray(im) for im in image_processor.VaeImageProcessor.numpy_to_pil(x)]
    )
    assert ours.dtype == np.uint8
    assert np.array_equal(ours, theirs)
    # Also for a single (H, W, 3) image and float64 input.
    assert np.array_equal(media.to_uint8(x[1]), theirs[1])
    x64 = x.astype(np.float64)
    theirs64 = np.stack(
        [np.asarray(im) for im in image_processor.VaeImageProcessor.numpy_to_pil(x64)]
    )
    assert np.array_equal(media.to_uint8(x64), theirs64)


def test_to_uint8_formula_and_clipping():
    x = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, -0.2, 1.7], dtype=np.float32)
    expected = (np.clip(x, 0, 1) * 255).round().astype("uint8")
    assert np.array_equal(media.to_uint8(x), expected)
    assert media.to_uint8(x)[-2:].tolist() == [0, 255]


def test_to_uint8_validates_input():
    with pytest.raises(ValueError, match="float"):
        media.to_uint8(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        media.to_uint8(np.array([0.1, np.nan], np.float32))
    with pytest.raises(ValueError):
        media.to_uint8([0.1, 0.2])  # type: ignore[arg-type]


def test_png_compress_level_changes_size_and_cost_but_not_pixels():
    frame = gradient_frames(1, 96, 96)[0]
    fast, small = media.encode_image(frame, "png", compress_level=1), media.encode_image(frame, "png", compress_level=9)
    assert len(small) < len(fast)
    assert np.array_equal(media.decode_image(fast), frame) and np.array_equal(media.decode_image(small), frame)
    video = gradient_frames(3, 32, 32)
    assert np.array_equal(media.decode_video(media.encode_video(video, fps=8, fmt="apng", compress_level=0)), video)
    with pytest.raises(ValueError, match="compress_level"):
        media.encode_image(frame, "png", compress_level=10)
