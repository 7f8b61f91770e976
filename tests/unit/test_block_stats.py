"""Trimming Ray Data's per-block statistics: the newest kept (no Ray started)."""

from __future__ import annotations

from latentmill.pipelines.block_stats import trim_block_stats


def test_trim_keeps_the_newest_and_leaves_other_operators_alone():
    class Operator:
        def __init__(self, stats) -> None:
            self._output_blocks_stats = stats

    long, short, other = Operator(list(range(10))), Operator([1, 2]), object()
    assert trim_block_stats([long, short, other], keep=3) == 7
    assert long._output_blocks_stats == [7, 8, 9] and short._output_blocks_stats == [1, 2]
