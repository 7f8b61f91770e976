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


def band_values(hashes: np.ndarray, distance: int) -> np.ndarray:
    """Each hash's bits in each band (n hashes -> n x bands)."""
    return np.stack([(hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
                     for shift, width in bands(distance)], axis=1)


def keyframe_array(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`phash` values as an n x keyframes uint64 array, and which entries are real (videos may differ in
    keyframes; an image has one)."""
    parsed = [parse_hashes(text) for text in hashes]
    width = max((len(frames) for frames in parsed), default=1)
    values = np.zeros((len(parsed), width), dtype=np.uint64)
    present = np.zeros((len(parsed), width), dtype=bool)
    for row, frames in enumerate(parsed):
        values[row, :len(frames)] = frames
        present[row, :len(frames)] = True
    return values, present


def band_pairs(hashes: list[str], band: int, distance: int) -> int:
    """Near-duplicate pairs among `phash` values that share band `band` of their first keyframe hash,
    counting only the pairs whose first shared band is this one (the others are counted in an earlier band)."""
    return _band_pairs(*keyframe_array(hashes), band, distance)


def _band_pairs(keyframes: np.ndarray, present: np.ndarray, band: int, distance: int) -> int:
    """band_pairs, vectorised over buckets: with the samples sorted by the band's bits, the k-th pass
    compares each sample with the one k places after it in its bucket (a bucket of m samples: m - 1 passes).

    Identical hashes are first collapsed into one entry that counts as many samples: m copies of one
    picture (a broken model, a prompt table of repeats) are m(m-1)/2 pairs at once, where comparing them
    one by one would take m passes and, for m in the hundreds of thousands, hours.
    """
    if len(keyframes) < 2:
        return 0
    rows, weights = np.unique(np.concatenate([keyframes, present.astype(np.uint64)], axis=1), axis=0,
                              return_counts=True)
    keyframes, present = rows[:, :keyframes.shape[1]], rows[:, keyframes.shape[1]:].astype(bool)
    weights = weights.astype(np.int64)
    # identical samples share every band, so their first shared band is band 0
    pairs = int((weights * (weights - 1) // 2).sum()) if band == 0 else 0
    bits = band_values(keyframes[:, 0], distance)[:, :band + 1]
    order = np.argsort(bits[:, band], kind="stable")
    keyframes, present, bits, weights = keyframes[order], present[order], bits[order], weights[order]
    first = keyframes[:, 0]
    starts = np.flatnonzero(np.r_[True, bits[1:, band] != bits[:-1, band]])
    sizes = np.diff(np.r_[starts, len(order)])
    bucket_end = np.repeat(starts + sizes, sizes)  # one past the last sample of each sample's bucket
    step = 1
    active = np.flatnonzero(np.arange(len(order)) + step < bucket_end)
    while active.size:
        close = np.bitwise_count(first[active] ^ first[active + step]) <= distance
        left = active[close]
        right = left + step
        if band:  # a pair that shares an earlier band is counted there
            new = ~(bits[left, :band] == bits[right, :band]).any(axis=1)
            left, right = left[new], right[new]
        if keyframes.shape[1] > 1:  # videos: every keyframe both have must be close too
            near = np.bitwise_count(keyframes[left] ^ keyframes[right]) <= distance
            left = left[(near | ~(present[left] & present[right])).all(axis=1)]
        pairs += int((weights[left] * weights[left + step]).sum())
        step += 1
        active = active[active + step < bucket_end[active]]
    return pairs


def count_pairs(hashes: Iterable[str | None], distance: int) -> int:
    """Near-duplicate pairs among `phash` values, bucketed in this process (rows without one are skipped)."""
    keyframes, present = keyframe_array([text for text in hashes if text])
    return sum(_band_pairs(keyframes, present, band, distance) for band in range(distance + 1))
