"""Perceptual hashes and near-duplicate pair counting (io.perceptual, pipelines.duplicates), without Ray."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import media
from latentmill.io.hidden import HiddenOptions
from latentmill.io.perceptual import (band_values, bands, count_pairs, frames_hash, hamming_distance, image_hash,
                                      parse_hashes)
from latentmill.pipelines.duplicates import _bucket_entries, _count_group, count_dataset_pairs


def picture(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random picture (a few low-frequency waves per channel), like a photo's structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        value = np.zeros((size, size))
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 4, 2)
            value += rng.uniform(0.5, 1) * np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
        channels.append(value)
    image = np.stack(channels, axis=-1)
    return ((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)


def test_a_hash_is_stable_and_close_for_a_slightly_changed_image_but_far_for_another():
    image = picture(1)
    assert image_hash(image) == image_hash(image.copy())
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    recompressed = media.decode_image(media.encode_image(noisy, "jpeg", quality=70))
    assert hamming_distance(image_hash(image), image_hash(recompressed)) <= 4
    brighter = np.clip(image.astype(int) + 20, 0, 255).astype(np.uint8)
    assert hamming_distance(image_hash(image), image_hash(brighter)) <= 4
    others = [hamming_distance(image_hash(image), image_hash(picture(seed))) for seed in range(2, 12)]
    assert min(others) > 12 and 24 <= np.mean(others) <= 40, others


def test_a_video_is_hashed_at_up_to_four_keyframes_an_image_once():
    frames = np.stack([picture(seed) for seed in range(9)])
    value = frames_hash(frames)
    assert len(value.split()) == 4 and all(len(part) == 16 for part in value.split())
    assert parse_hashes(value) == [image_hash(frames[i]) for i in (0, 3, 5, 8)]
    assert frames_hash(frames[:1]) == f"{image_hash(frames[0]):016x}"
    assert media.keyframe_indices(2) == [0, 1] and media.keyframe_indices(1) == [0]


@pytest.mark.parametrize("distance", [0, 1, 4, 7, 12])
def test_the_bands_cover_every_bit_once(distance):
    spans = bands(distance)
    assert len(spans) == distance + 1
    covered = sorted(bit for shift, width in spans for bit in range(shift, shift + width))
    assert covered == list(range(64))
    value = random.Random(distance).getrandbits(64)
    parts = band_values(np.array([value], dtype=np.uint64), distance)[0]
    assert sum(int(bits) << shift for bits, (shift, _) in zip(parts, spans)) == value


def near_copy(value: int, flips: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), flips):
        value ^= 1 << bit
    return value


def random_hashes(seed: int, keyframes: int = 1, count: int = 400) -> list[str]:
    """Clusters of near copies (0-8 flipped bits) of a few random hashes, and unrelated ones."""
    rng = random.Random(seed)
    bases = [[rng.getrandbits(64) for _ in range(keyframes)] for _ in range(40)]
    hashes = []
    for _ in range(count):
        if rng.random() < 0.7:
            flips = rng.randint(0, 8)
            frames = [near_copy(value, flips, rng) for value in rng.choice(bases)]
        else:
            frames = [rng.getrandbits(64) for _ in range(keyframes)]
        hashes.append(" ".join(f"{value:016x}" for value in frames))
    return hashes


def brute_force(hashes: list[str], distance: int) -> int:
    return sum(all(hamming_distance(a, b) <= distance for a, b in zip(parse_hashes(x), parse_hashes(y)))
               for x, y in itertools.combinations(hashes, 2))


@pytest.mark.parametrize("distance", [0, 2, 4, 8])
@pytest.mark.parametrize("keyframes", [1, 3])
def test_banded_pair_counting_equals_brute_force(distance, keyframes):
    hashes = random_hashes(distance * 10 + keyframes, keyframes)
    expected = brute_force(hashes, distance)
    assert expected > 0 or distance == 0
    assert count_pairs(hashes + [None, ""], distance) == expected


def test_the_distributed_buckets_count_what_the_driver_counts(tmp_path):
    """The Ray path's two steps (manifest files -> entries; a group of whole buckets -> its pairs), grouped
    here by hand, give the brute-force count; so does the driver path over the same files."""
    hashes = random_hashes(7)
    files = []
    for part in range(4):
        path = tmp_path / f"part-{part}.parquet"
        pq.write_table(pa.table({schema.ID: [f"r{i}" for i in range(100)],
                                 schema.PHASH: hashes[part * 100:(part + 1) * 100]}), path)
        files.append(str(path))
    pq.write_table(pa.table({schema.ID: ["old"]}), tmp_path / "old.parquet")  # a part from before phash
    files.append(str(tmp_path / "old.parquet"))
    entries = _bucket_entries(pa.table({"path": files}), str(tmp_path), HiddenOptions({}), 4, partitions=3)
    assert entries.num_rows == 5 * len(hashes)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, key in enumerate(zip(entries["band"].to_pylist(), entries["partition"].to_pylist())):
        groups.setdefault(key, []).append(index)
    assert len(groups) == 5 * 3
    counted = sum(_count_group(entries.take(rows), 4)["pairs"][0].as_py() for rows in groups.values())
    assert counted == brute_force(hashes, 4)
    assert count_dataset_pairs(str(tmp_path), {}, files, len(hashes), 4) == counted


def test_identical_blank_images_are_all_near_duplicates():
    blank = frames_hash(np.zeros((1, 64, 64, 3), np.uint8))
    assert count_pairs([blank] * 5, 0) == 10 and count_pairs([blank] * 5, 4) == 10


@pytest.mark.parametrize("keyframes", [1, 3])
def test_repeated_hashes_count_as_brute_force_does(keyframes):
    hashes = random_hashes(4 * 10 + keyframes, keyframes)[:60]
    repeated = hashes * 3 + hashes[:7]
    assert count_pairs(repeated, 4) == brute_force(repeated, 4)


def test_a_run_of_one_picture_counts_its_pairs_at_once():
    """300,000 copies of two pictures (a model that ignores its prompt): counted from the copies' numbers,
    not copy by copy (which took minutes at 100,000 and would take hours at a million)."""
    assert count_pairs(["bc61ce99b2ad2a54"] * 200_000 + ["bc61ce99b2ad2a55"] * 100_000, 4) == 300_000 * 299_999 // 2
