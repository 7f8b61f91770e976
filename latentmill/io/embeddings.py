"""Prompt embeddings cached across runs (`cache.embeddings: URI`), local or in object storage.

A nightly run renders mostly the prompts it rendered the night before. The encode stage looks each
row up by what decides its embeddings: the text encoders' and tokenizers' content hash, the family, the
encoder's dtype, and the row's encoding key (its prompt, its negative prompt where guidance uses it,
its per-row parameters). It encodes only the misses, and loads its text encoder only at its first
miss, so a fully cached run never loads it (9 GB for T5-XXL).

One object per entry, `<uri>/<key[:2]>/<key>.emb`: an 8-byte header length, a JSON header (format,
key, truncation flag, each column's offset and length) and the columns' packed arrays. An entry that
cannot be read, does not parse or names another key is ignored with a warning, and the row is
encoded again. The cache never decides an output: a hit gives byte-identical embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "latentmill-embeddings-v1"
EXTENSION = "emb"


def entry_key(encoder_hash: str, family: str, dtype: str, float32: bool, encoding_key: tuple) -> str:
    decisive = [FORMAT, encoder_hash, family, dtype, float32, encoding_key]
    return hashlib.sha256(json.dumps(decisive, default=str).encode()).hexdigest()


def encode_entry(key: str, packed: dict[str, bytes], truncated: bool) -> bytes:
    columns, offset = {}, 0
    for name, data in packed.items():
        columns[name] = [offset, len(data)]
        offset += len(data)
    header = json.dumps({"format": FORMAT, "key": key, "truncated": truncated, "columns": columns}).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(packed.values())


def decode_entry(key: str, data: bytes) -> tuple[dict[str, bytes], bool]:
    """The packed columns and truncation flag of an entry; ValueError if it is not `key`'s."""
    if len(data) < 8:
        raise ValueError("shorter than its header")
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    if header.get("format") != FORMAT or header.get("key") != key:
        raise ValueError("written for another key or by another format")
    body = data[8 + length:]
    packed = {}
    for name, (offset, size) in header["columns"].items():
        if offset + size > len(body):
            raise ValueError("truncated")
        packed[name] = body[offset:offset + size]
    return packed, bool(header["truncated"])


class EmbeddingCache:
    def __init__(self, uri: str, storage_options: dict[str, Any]) -> None:
        from latentmill.io import storage

        self.uri = uri
        self.fs, self.root = storage.resolve(uri, storage_options)

    def _path(self, key: str) -> str:
        from latentmill.io import storage

        return storage.join(self.root, key[:2], f"{key}.{EXTENSION}")

    def get(self, key: str) -> tuple[dict[str, bytes], bool] | None:
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - an unreadable entry is a miss, never a failed row
            log.warning("embedding cache %s: cannot read entry %s (%s); encoding again", self.uri, key,
                        type(exc).__name__)
            return None
        try:
            return decode_entry(key, data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("embedding cache %s: ignoring entry %s (%s); encoding again", self.uri, key, exc)
            return None

    def put(self, key: str, packed: dict[str, bytes], truncated: bool) -> None:
        from latentmill.io import storage

        try:
            storage.put_bytes(self.fs, self._path(key), encode_entry(key, packed, truncated))
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written costs speed, not rows
            log.warning("embedding cache %s: cannot write entry %s (%s)", self.uri, key, exc)

