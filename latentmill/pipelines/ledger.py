"""One owner per request id across all validation tasks.

Validation runs in parallel tasks that cannot see each other's rows, so a duplicate id could be
generated twice and overwrite the first one's media. The ledger, a small actor, hands each id out
once; a later row with the same id becomes an error row instead.
"""

from __future__ import annotations


class IdLedger:
    def __init__(self) -> None:
        self._claimed: set[str] = set()

    def claim(self, ids: list[str]) -> list[bool]:
        """True where this call is the first to claim the id."""
        firsts = []
        for row_id in ids:
            firsts.append(row_id not in self._claimed)
            self._claimed.add(row_id)
        return firsts


def start_ledger():
    import ray

    return ray.remote(num_cpus=0)(IdLedger).remote()
