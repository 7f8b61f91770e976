"""The duplicate-id ledger on Ray: split across actors for a large table, one owner per id."""

import pytest

from latentmill.pipelines.ledger import start_ledger

pytestmark = pytest.mark.slow


def test_a_large_table_gets_a_sharded_ledger_that_hands_each_id_out_once(ray_local):
    import ray

    ledger = start_ledger(1_000_000)
    assert len(ledger.shards) == 4
    ids = [f"row-{i}" for i in range(2_000)]
    assert all(ledger.claim(ids[:1_500]))
    again = ledger.claim(ids[1_000:] + ["row-0"])  # 500 claimed before, 500 new, one repeat
    assert again == [False] * 500 + [True] * 500 + [False]
    held = ray.get([shard.__ray_call__.remote(lambda self: len(self._claimed)) for shard in ledger.shards])
    assert sum(held) == 2_000 and max(held) < 2_000 * 0.4  # split between the shards, none holds all
    ledger.stop()
    assert len(start_ledger(10).shards) == 1
