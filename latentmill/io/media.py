"""Encoding generated frames to image/video bytes, and decoding them back (tests, verification).

Frames are numpy ``uint8`` RGB arrays: an image is ``(H, W, 3)``, a video ``(F, H, W, 3)``.
``to_uint8`` converts the float ``[0, 1]`` output of diffusers pipelines exactly like
``diffusers.image_processor.VaeImageProcessor.numpy_to_pil``.

This module is a leaf: Pillow and PyAV are imported inside the functions that use them.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction

import numpy as np

#: zlib level of PNG and APNG files. Level 1 costs 1.3-8x less CPU than Pillow's default 6 on a 1024x1024
#: picture for a file 9-18% larger (BENCHMARKS.md section 10, "Where the host work goes"); PNG is lossless, so the
#: pixels are the same at every level. In bulk rendering the encoder's CPU is what a decode actor spends most.
PNG_COMPRESS_LEVEL = 1

__all__ = [
    "IMAGE_FORMATS",
    "VIDEO_FORMATS",
    "normalize_format",
    "format_info",
    "carries_audio",
    "to_uint8",
    "encode_image",
    "encode_video",
    "decode_image",
    "decode_video",
]

#: image format -> (file extension without dot, MIME type)
IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("png", "image/png"),
    "jpeg": ("jpg", "image/jpeg"),
    "webp": ("webp", "image/webp"),
}

#: video format -> (file extension without dot, MIME type). "apng" is lossless (pixel-exact).
VIDEO_FORMATS: dict[str, tuple[str, str]] = {
    "mp4": ("mp4", "video/mp4"),
    "apng": ("apng", "image/apng"),
}

_ALIASES = {"jpg": "jpeg"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def carries_audio(fmt: str) -> bool:
    """Whether a video format holds a sound track (mp4 does; apng does not)."""
    return normalize_format(fmt) == "mp4"


def normalize_format(fmt: str) -> str:
    """Lower-case a format name and resolve aliases (``jpg`` -> ``jpeg``)."""
    if not isinstance(fmt, str):
        raise ValueError(f"format must be a string, got {fmt!r}")
    f = fmt.strip().lower().lstrip(".")
    return _ALIASES.get(f, f)


def format_info(fmt: str) -> tuple[str, str]:
    """``(extension, mime_type)`` of an image or video format name."""
    f = normalize_format(fmt)
    if f in IMAGE_FORMATS:
        return IMAGE_FORMATS[f]
    if f in VIDEO_FORMATS:
        return VIDEO_FORMATS[f]
    known = sorted(IMAGE_FORMATS) + sorted(VIDEO_FORMATS)
    raise ValueError(f"unknown media format {fmt!r}; expected one of {known}")


# --------------------------------------------------------------------------------------------
# Validation / conversion
# --------------------------------------------------------------------------------------------


def _check_uint8(arr: object, ndim: int, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} must have dtype uint8, got {arr.dtype} (use to_uint8() for float [0, 1] data)"
        )
    shape = "(H, W, 3)" if ndim == 3 else "(F, H, W, 3)"
    if arr.ndim != ndim or arr.shape[-1] != 3:
        raise ValueError(f"{what} must have shape {shape} (RGB), got {arr.shape}")
    if any(s == 0 for s in arr.shape):
        raise ValueError(f"{what} must not be empty, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in ``[0, 1]`` (any shape, e.g. ``(H,W,3)`` or ``(F,H,W,3)``) -> ``uint8``.

    Same arithmetic as diffusers' ``numpy_to_pil``: ``(x * 255).round().astype("uint8")`` in the
    input's own float dtype. Values are first clipped to ``[0, 1]`` (diffusers' postprocess has
    already clamped them, so for its outputs this changes nothing; for out-of-range input it
    avoids wrap-around). NaNs raise ``ValueError``.
    """
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be a float array with values in [0, 1], got {frames.dtype}")
    if frames.size and np.isnan(frames).any():
        raise ValueError("frames contain NaN (the pipeline produced invalid output)")
    x = np.clip(frames, 0.0, 1.0)  # a new array: scaled and rounded in place, one copy instead of three
    x *= 255
    np.rint(x, out=x)  # what ndarray.round() does with no decimals
    return x.astype("uint8")


def keyframe_indices(frame_count: int, most: int = 4) -> list[int]:
    """Up to `most` evenly spaced frames, first and last included, that stand for a video in the quality
    checks (CLIP score, perceptual hashes); an image's one frame."""
    return sorted({round(i) for i in np.linspace(0, frame_count - 1, min(frame_count, most))})


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def encode_image(frame: np.ndarray, fmt: str = "png", quality: int = 95,
                 compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB frame as PNG (lossless), JPEG or WebP (lossy).

    ``quality`` (1-100) applies to JPEG and WebP, ``compress_level`` (0-9) to PNG.
    """
    from PIL import Image

    f = normalize_format(fmt)
    if f not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(IMAGE_FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    _check_compress_level(compress_level)
    arr = _check_uint8(frame, 3, "frame")
    img = Image.fromarray(arr)  # (H, W, 3) uint8 -> RGB
    buf = io.BytesIO()
    if f == "png":
        img.save(buf, format="PNG", compress_level=compress_level)
    elif f == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality, lossless=False, method=4)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes (PNG/JPEG/WebP, first frame of an APNG) to ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise ValueError("data must be non-empty bytes")
    with Image.open(io.BytesIO(bytes(data))) as img:
        return np.asarray(img.convert("RGB")).copy()


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------


def _fps_fraction(fps: float) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not np.isfinite(float(fps)) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def encode_video(
    frames: np.ndarray,
    fps: float,
    fmt: str = "mp4",
    *,
    crf: int = 18,
    preset: str = "medium",
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """Encode ``(F, H, W, 3)`` uint8 RGB frames as a video.

    ``audio``: a sound track for ``mp4``, float samples in ``[-1, 1]`` of shape ``(channels, samples)``
    (1 or 2 channels) at ``sample_rate`` Hz, muxed as an AAC stream next to the video. ``apng`` cannot
    carry sound.

    ``mp4``: H.264 (libx264), ``yuv420p`` so that every player can show it, encoded with PyAV
    (``crf``: 0 best .. 51 worst, 18 is visually near-lossless). The file is faststart: the
    ``moov`` index comes before the ``mdat`` media data, so a browser starts playing while it
    downloads (ffmpeg's ``movflags=faststart``, which re-reads its output: the encoder writes to a
    temporary file, not to memory).
    4:2:0 chroma needs even width and height: an odd dimension is padded by one pixel
    replicating the last row/column, so the decoded video is then 1 px larger in that
    dimension (diffusers models produce multiples of 8, so this is rare).

    ``apng``: lossless animated PNG via Pillow (zlib level ``compress_level``), frame duration ``1000 / fps`` ms; decodes
    pixel-exactly with ``decode_video``. Consecutive identical frames are kept (Pillow would
    otherwise merge them).
    """
    f = normalize_format(fmt)
    if f not in VIDEO_FORMATS:
        raise ValueError(f"unknown video format {fmt!r}; expected one of {sorted(VIDEO_FORMATS)}")
    arr = _check_uint8(frames, 4, "frames")
    rate = _fps_fraction(fps)
    if f == "apng":
        if audio is not None:
            raise ValueError("apng cannot carry sound; encode the video as mp4 to keep its audio")
        _check_compress_level(compress_level)
        return _encode_apng(arr, rate, compress_level)
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an int in 0..51, got {crf!r}")
    if audio is not None:
        _check_audio(audio, sample_rate)
    return _encode_mp4(arr, rate, crf=crf, preset=preset, audio=audio, sample_rate=sample_rate)


def _check_audio(audio: object, sample_rate: object) -> None:
    if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.shape[0] not in (1, 2) or not audio.shape[1]:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise ValueError(f"audio must be a numpy array of shape (1 or 2 channels, samples), got {shape}")
    if not np.issubdtype(audio.dtype, np.floating) or not np.isfinite(audio).all():
        raise ValueError("audio must hold finite float samples in [-1, 1]")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int with audio, got {sample_rate!r}")


def _encode_mp4(arr: np.ndarray, rate: Fraction, *, crf: int, preset: str, audio: np.ndarray | None = None,
                sample_rate: int | None = None) -> bytes:
    import av

    _, h, w, _ = arr.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        h, w = h + pad_h, w + pad_w

    # faststart moves the moov box in front of mdat when the file is closed, by re-opening the output
    # by name and shifting its data: that needs a real file (a BytesIO output has no name to re-open).
    with tempfile.TemporaryDirectory(prefix="latentmill-mp4-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width = w
            stream.height = h
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            # every stream is added before the first packet: muxing writes the header
            sound = None if audio is None else _aac_stream(container, audio, sample_rate)
            for i, frame in enumerate(arr):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts = i
                vf.time_base = Fraction(1) / rate
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
            if sound is not None:
                for packet in sound[0].encode(sound[1]):
                    container.mux(packet)
                for packet in sound[0].encode():
                    container.mux(packet)
        with open(path, "rb") as handle:
            return handle.read()


def _aac_stream(container, audio: np.ndarray, sample_rate: int):
    """An AAC stream for ``audio`` (channels, samples) and the one frame that holds it all (PyAV cuts it
    into the encoder's frame size)."""
    import av

    layout = "mono" if audio.shape[0] == 1 else "stereo"
    stream = container.add_stream("aac", rate=sample_rate, layout=layout)
    planar = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    return stream, frame


def _check_compress_level(level: object) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"compress_level must be an int in 0..9, got {level!r}")


def _encode_apng(arr: np.ndarray, rate: Fraction, compress_level: int) -> bytes:
    from PIL import Image, PngImagePlugin

    images = [Image.fromarray(frame) for frame in arr]
    duration_ms = float(1000 / rate)
    # Pillow merges a frame identical to the previous one into it (longer duration) unless the
    # two frames' blend ops differ; with opaque RGB frames OP_SOURCE and OP_OVER render the
    # same, so flip the op on repeated frames to keep one APNG frame per input frame.
    source, over = PngImagePlugin.Blend.OP_SOURCE, PngImagePlugin.Blend.OP_OVER
    blend = [source]
    for i in range(1, len(arr)):
        if np.array_equal(arr[i], arr[i - 1]):
            blend.append(over if blend[-1] == source else source)
        else:
            blend.append(source)
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="PNG",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
        disposal=PngImagePlugin.Disposal.OP_NONE,
        blend=blend,
        compress_level=compress_level,
    )
    return buf.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    """Decode MP4 (PyAV) or APNG (Pillow) bytes to ``(F, H, W, 3)`` uint8 RGB frames."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise ValueError("data must be non-empty bytes")
    data = bytes(data)
    if data.startswith(_PNG_SIGNATURE):
        from PIL import Image, ImageSequence

        with Image.open(io.BytesIO(data)) as img:
            frames = [np.asarray(fr.convert("RGB")).copy() for fr in ImageSequence.Iterator(img)]
    else:
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no video stream in data")
            frames = [
                fr.to_ndarray(format="rgb24") for fr in container.decode(container.streams.video[0])
            ]
    if not frames:
        raise ValueError("video has no frames")
    return np.stack(frames)
