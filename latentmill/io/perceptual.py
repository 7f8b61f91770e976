"""Perceptual hashes, 64-bit DCT hashes (pHash) that stay close when an image changes a little, and
near-duplicate pairs among them.

The hash is the usual pHash (as in the `imagehash` package): the image in greyscale, resized to 32 x 32,
its 2-D DCT-II, the 8 x 8 lowest frequencies, one bit per coefficient above their median. Two hashes'
Hamming distance says how different the images look: a few of 64 bits for a re-encoded or slightly edited
image, about 32 for unrelated ones. A video is hashed at its keyframes (io.media.keyframe_indices).

Two samples are near-duplicates when each of their keyframe hashes (an image has one) is within
`distance` bits of the other's at the same keyframe. To find them without comparing every pair, the
first keyframe hash's 64 bits are split into distance + 1 bands: two hashes within `distance` bits differ
in at most `distance` bands, so they share at least one band exactly (pigeonhole). Each sample goes into
one bucket per band, keyed by (band, the band's bits), and only samples of one bucket are compared. A
pair that shares several bands is counted only in the bucket of the first band it shares, so buckets can
be counted apart (pipelines.duplicates spreads them over Ray) with no de-duplication across them.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from latentmill.io.media import keyframe_indices

HASH_BITS = 64
_LOW_FREQUENCIES = 8  # 8 x 8 coefficients: 64 bits
_SAMPLE_SIZE = 32


@lru_cache(maxsize=1)
def _dct_matrix(size: int = _SAMPLE_SIZE) -> np.ndarray:
    """The (unnormalised) DCT-II as a matrix: `matrix @ x` transforms x along its first axis."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    return 2 * np.cos(np.pi * (2 * n + 1) * k / (2 * size))


def image_hash(frame: np.ndarray) -> int:
    """The 64-bit pHash of one uint8 frame (H x W x 3, or H x W greyscale)."""
    from PIL import Image

    grey = Image.fromarray(frame).convert("L").resize((_SAMPLE_SIZE, _SAMPLE_SIZE), Image.Resampling.LANCZOS)
    dct = _dct_matrix()
    coefficients = dct @ np.asarray(grey, dtype=np.float64) @ dct.T
    low = coefficients[:_LOW_FREQUENCIES, :_LOW_FREQUENCIES].ravel()
    bits = low > np.median(low)
    return int("".join("1" if bit else "0" for bit in bits), 2)


def frames_hash(frames: np.ndarray) -> str:
    """The manifest's `phash` of a sample (uint8 frames, F x H x W x 3): each keyframe's hash as 16 hex
    digits, separated by spaces (one for an image)."""
    return " ".join(f"{image_hash(frames[i]):016x}" for i in keyframe_indices(len(frames)))


def parse_hashes(text: str) -> list[int]:
    """A `phash` value back into its keyframe hashes."""
    return [int(part, 16) for part in text.split()]


def hamming_distance(a: int, b: int) -> int:
    """Hamming distance of two hashes."""
    return (a ^ b).bit_count()


def bands(distance: int) -> list[tuple[int, int]]:
    """(shift, width) of each of the distance + 1 bands that split a 64-bit hash, widest first."""
    count = distance + 1
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    shifts = [HASH_BITS - sum(widths[:i + 1]) for i in range(count)]
    return list(zip(shifts, widths))


def band_values(value: int, distance: int) -> list[int]:
    return [(value >> shift) & ((1 << width) - 1) for shift, width in bands(distance)]


def bucket_pairs(hashes: list[str], band: int, distance: int) -> int:
    """Near-duplicate pairs among one bucket's samples (`phash` values sharing band `band`), counting only
    the pairs whose first shared band is this one."""
    keyframes = [parse_hashes(text) for text in hashes]
    first = np.array([frames[0] for frames in keyframes], dtype=np.uint64)
    earlier = np.array([band_values(frames[0], distance)[:band] for frames in keyframes], dtype=np.uint64)
    pairs = 0
    for i in range(len(keyframes) - 1):
        close = np.bitwise_count(first[i] ^ first[i + 1:]) <= distance
        if band:  # counted in an earlier band's bucket already
            close &= ~(earlier[i] == earlier[i + 1:]).any(axis=1)
        for j in np.nonzero(close)[0] + i + 1:
            pairs += all(hamming_distance(a, b) <= distance for a, b in zip(keyframes[i][1:], keyframes[j][1:]))
    return pairs


def count_pairs(hashes: Iterable[str | None], distance: int) -> int:
    """Near-duplicate pairs among `phash` values, bucketed in this process (rows without one are skipped)."""
    buckets: dict[tuple[int, int], list[str]] = {}
    for text in hashes:
        if text:
            for band, value in enumerate(band_values(parse_hashes(text)[0], distance)):
                buckets.setdefault((band, value), []).append(text)
    return sum(bucket_pairs(members, band, distance) for (band, _), members in buckets.items() if len(members) > 1)
