"""MP4s are faststart: the moov index comes before the mdat media data, so playback can start mid-download."""

from __future__ import annotations

import numpy as np
import pytest

from latentmill.io import media

try:
    from tests.helpers import mp4_top_level_boxes
except ImportError:  # pytest run without the repository root on sys.path
    from helpers import mp4_top_level_boxes


def frames(n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(n * h * w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("n, h, w", [(1, 16, 16), (12, 32, 48), (5, 33, 47)])
def test_mp4_moov_comes_before_mdat(n, h, w):
    data = media.encode_video(frames(n, h, w), fps=8)
    boxes = mp4_top_level_boxes(data)
    assert boxes[0] == b"ftyp"
    assert boxes.count(b"moov") == 1 and b"mdat" in boxes
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes
    # Still a whole, playable file: every frame decodes.
    assert media.decode_video(data).shape[0] == n


def test_mp4_encoding_leaves_no_temporary_files(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    media.encode_video(frames(3, 16, 16), fps=8)
    assert list(tmp_path.iterdir()) == []


def test_box_walker_reads_a_non_faststart_layout():
    """The walker itself: a hand-made ftyp, mdat, moov file (what the encoder wrote before)."""
    ftyp = (16).to_bytes(4, "big") + b"ftypisom" + b"\0\0\2\0"
    mdat = (12).to_bytes(4, "big") + b"mdat" + b"abcd"
    moov = (8).to_bytes(4, "big") + b"moov"
    assert mp4_top_level_boxes(ftyp + mdat + moov) == [b"ftyp", b"mdat", b"moov"]
    with pytest.raises(ValueError, match="overruns"):
        mp4_top_level_boxes(ftyp + mdat[:-1])
