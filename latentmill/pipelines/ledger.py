"""Request ids at scale: the set of ids a previous run finished, and one owner per id in this run.

Ids are kept as 16-byte BLAKE2b digests (a false match needs a 128-bit collision), so a million ids take
16 MB, not the ~100 MB of a Python set of strings:

- `IdSet`: sorted digests in one numpy array, put in Ray's object store once; every validation task
  maps it from shared memory (no copy, no unpickling) and looks a whole batch up at once.
- `ShardedLedger`: validation runs in parallel tasks that cannot see each other's rows, so a duplicate
  id could be generated twice and overwrite the first one's media. Small actors hand each id out once;
  a later row with the same id becomes an error row instead. The ids are split between the actors by
  digest, so no process holds every id of a large table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

DIGEST = np.dtype("S16")
IDS_PER_SHARD = 250_000  # a ledger actor per this many input rows (at most MAX_SHARDS)
MAX_SHARDS = 16


def id_digests(ids: Iterable[str]) -> np.ndarray:
    return np.array([hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in ids], dtype=DIGEST)


class IdSet:
    """An immutable set of ids, compact and shareable through the object store."""

    def __init__(self, sorted_digests: np.ndarray) -> None:
        self.digests = sorted_digests

    @classmethod
    def from_ids(cls, ids: Iterable[str]) -> IdSet:
        return cls(np.unique(id_digests(ids)))

    def __len__(self) -> int:
        return len(self.digests)

    def contains(self, ids: list[str]) -> np.ndarray:
        """Membership of each id, as a boolean array."""
        if not len(self.digests) or not ids:
            return np.zeros(len(ids), dtype=bool)
        wanted = id_digests(ids)
        at = np.minimum(np.searchsorted(self.digests, wanted), len(self.digests) - 1)
        return self.digests[at] == wanted

    def __contains__(self, row_id: str) -> bool:
        return bool(self.contains([row_id])[0])


_shared: dict[str, IdSet] = {}


def shared_id_set(value) -> IdSet | None:
    """An IdSet passed to a task by reference: fetched once per worker process (tasks reuse processes)."""
    import ray

    if not isinstance(value, ray.ObjectRef):
        return value
    key = value.hex()
    if key not in _shared:
        _shared.clear()  # a new job's set replaces the last one's
        _shared[key] = ray.get(value)
    return _shared[key]


class IdLedger:
    """One shard of the ledger: the digests it has handed out."""

    def __init__(self) -> None:
        self._claimed: set[bytes] = set()

    def claim(self, digests: np.ndarray) -> list[bool]:
        """True where this call is the first to claim the id."""
        firsts = []
        for digest in digests.tolist():
            firsts.append(digest not in self._claimed)
            self._claimed.add(digest)
        return firsts


class ShardedLedger:
    """Handles of the ledger's shards; picklable, so every validation task gets a copy."""

    def __init__(self, shards: list) -> None:
        self.shards = shards

    def claim(self, ids: list[str]) -> list[bool]:
        import ray

        if not ids:
            return []
        digests = id_digests(ids)
        shard_of = np.frombuffer(digests.tobytes(), dtype=np.uint8)[::DIGEST.itemsize] % len(self.shards)
        positions = [np.flatnonzero(shard_of == k) for k in range(len(self.shards))]
        calls = {k: self.shards[k].claim.remote(digests[where]) for k, where in enumerate(positions) if len(where)}
        firsts = np.zeros(len(ids), dtype=bool)
        for k, answer in zip(calls, ray.get(list(calls.values()))):
            firsts[positions[k]] = answer
        return firsts.tolist()

    def stop(self) -> None:
        import ray

        for shard in self.shards:
            ray.kill(shard)


def start_ledger(rows: int) -> ShardedLedger:
    import ray

    count = max(1, min(MAX_SHARDS, -(-rows // IDS_PER_SHARD)))
    actor = ray.remote(num_cpus=0)(IdLedger)
    return ShardedLedger([actor.remote() for _ in range(count)])
