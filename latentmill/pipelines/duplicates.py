"""Near-duplicate pairs among a dataset's samples, counted without one process holding every hash.

The buckets of io.perceptual's banding: up to DRIVER_HASHES samples are bucketed on the driver; beyond
that the buckets are a Ray Data groupby on (band, band bits) (a distributed shuffle), each bucket counted
by a task, so no process holds more than the buckets it is given.
"""

from __future__ import annotations

from typing import Any

from latentmill import schema
from latentmill.io.perceptual import band_pairs, band_values, count_pairs, parse_hashes

DRIVER_HASHES = 200_000  # below this many samples the driver counts (a few MB of hashes)


def count_dataset_pairs(output_uri: str, storage_options: dict[str, Any], manifest_files: list[str],
                        samples: int, distance: int) -> int:
    """Near-duplicate pairs among the samples of a dataset's committed manifest files: on the driver for up
    to DRIVER_HASHES samples, else with Ray Data (Ray must be initialised)."""
    from latentmill.io import storage

    if samples <= DRIVER_HASHES:
        fs, _ = storage.resolve(output_uri, storage_options)
        return count_pairs((text for path in manifest_files for text in _read_hashes(fs, path)), distance)
    return _count_with_ray(output_uri, storage_options, manifest_files, distance)


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
                    distance: int) -> int:
    import ray.data

    from latentmill.io.hidden import HiddenOptions

    files = ray.data.from_items([{"path": path} for path in manifest_files])
    entries = files.map_batches(_bucket_entries, batch_size=1, batch_format="pyarrow",
                                fn_kwargs={"output_uri": output_uri, "options": HiddenOptions(storage_options),
                                           "distance": distance})
    counted = entries.groupby(["band", "value"]).map_groups(_count_bucket, batch_format="pyarrow",
                                                            fn_kwargs={"distance": distance})
    return int(counted.sum("pairs") or 0)


def _bucket_entries(batch, output_uri: str, options, distance: int):
    """Manifest files -> one row per sample and band: (band, the band's bits, the sample's phash)."""
    import numpy as np
    import pyarrow as pa

    from latentmill.io import storage

    fs, _ = storage.resolve(output_uri, options.reveal())
    hashes = [text for path in batch.column("path").to_pylist() for text in _read_hashes(fs, path) if text]
    first = np.array([parse_hashes(text)[0] for text in hashes], dtype=np.uint64)
    count = distance + 1
    bits = band_values(first, distance) if hashes else np.zeros((0, count), dtype=np.uint64)
    return pa.table({"band": pa.array(np.tile(np.arange(count), len(hashes)), pa.int64()),
                     "value": pa.array(bits.ravel(), pa.uint64()),
                     schema.PHASH: pa.array(np.repeat(np.array(hashes, dtype=object), count), pa.string())})


def _count_bucket(group, distance: int):
    import pyarrow as pa

    members = group.column(schema.PHASH).to_pylist()
    pairs = band_pairs(members, group.column("band")[0].as_py(), distance) if len(members) > 1 else 0
    return pa.table({"pairs": pa.array([pairs], pa.int64())})
