"""Near-duplicate pairs among a dataset's samples, counted without one process holding every hash.

The buckets of io.perceptual's banding: up to DRIVER_HASHES samples are bucketed on the driver; beyond
that by Ray Data. Each manifest file becomes one entry per sample and band; entries are grouped (a
distributed shuffle) by band and by their band bits modulo a partition count, so that a group holds
whole buckets, about GROUP_HASHES entries of them, and each group's buckets are counted by one task with
the driver's vectorised code. No process holds more than the groups it is given.
"""

from __future__ import annotations

from typing import Any

from latentmill import schema
from latentmill.io.perceptual import band_pairs, band_values, count_pairs, parse_hashes

DRIVER_HASHES = 200_000  # up to this many samples the driver counts (tens of MB, under a second)
GROUP_HASHES = 100_000  # entries per group counted by one Ray task (whole buckets: a hot bucket can exceed it)


def count_dataset_pairs(output_uri: str, storage_options: dict[str, Any], manifest_files: list[str],
                        samples: int, distance: int) -> int:
    """Near-duplicate pairs among the samples of a dataset's committed manifest files: on the driver for up
    to DRIVER_HASHES samples, else with Ray Data (Ray must be initialised)."""
    from latentmill.io import storage

    if samples <= DRIVER_HASHES:
        fs, _ = storage.resolve(output_uri, storage_options)
        return count_pairs((text for path in manifest_files for text in _read_hashes(fs, path)), distance)
    return _count_with_ray(output_uri, storage_options, manifest_files, distance, -(-samples // GROUP_HASHES))


def _read_hashes(fs, path: str) -> list[str | None]:
    """A manifest file's `phash` column, read alone (a parquet-layout shard also holds the media); none in
    parts written before the column existed."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if schema.PHASH not in parquet.schema_arrow.names:
            return []
        return parquet.read(columns=[schema.PHASH])[schema.PHASH].to_pylist()


def _count_with_ray(output_uri: str, storage_options: dict[str, Any], manifest_files: list[str],
                    distance: int, partitions: int) -> int:
    import ray.data

    from latentmill.io.hidden import HiddenOptions

    files = ray.data.from_items([{"path": path} for path in manifest_files])
    entries = files.map_batches(_bucket_entries, batch_size=1, batch_format="pyarrow",
                                fn_kwargs={"output_uri": output_uri, "options": HiddenOptions(storage_options),
                                           "distance": distance, "partitions": partitions})
    groups = (distance + 1) * partitions
    counted = entries.groupby(["band", "partition"], num_partitions=min(groups, 200)).map_groups(
        _count_group, batch_format="pyarrow", fn_kwargs={"distance": distance})
    return int(counted.sum("pairs") or 0)


def _bucket_entries(batch, output_uri: str, options, distance: int, partitions: int):
    """Manifest files -> one row per sample and band: (band, the group of its bucket, the sample's phash)."""
    import numpy as np
    import pyarrow as pa

    from latentmill.io import storage

    fs, _ = storage.resolve(output_uri, options.reveal())
    hashes = [text for path in batch.column("path").to_pylist() for text in _read_hashes(fs, path) if text]
    first = np.array([parse_hashes(text)[0] for text in hashes], dtype=np.uint64)
    count = distance + 1
    bits = band_values(first, distance) if hashes else np.zeros((0, count), dtype=np.uint64)
    return pa.table({"band": pa.array(np.tile(np.arange(count), len(hashes)), pa.int64()),
                     "partition": pa.array(bits.ravel() % np.uint64(partitions), pa.int64()),
                     schema.PHASH: pa.array(np.repeat(np.array(hashes, dtype=object), count), pa.string())})


def _count_group(group, distance: int):
    """The pairs of the whole buckets of one band in a group (band_pairs sorts them into their buckets)."""
    import pyarrow as pa

    pairs = band_pairs(group.column(schema.PHASH).to_pylist(), group.column("band")[0].as_py(), distance)
    return pa.table({"pairs": pa.array([pairs], pa.int64())})
