"""A cap on the per-block statistics Ray Data keeps in the driver.

Every map operator appends the statistics of each block it outputs to a list (`_output_blocks_stats`,
read only to print `Dataset.stats()` when the dataset ends) and never drops one: about 5 Python objects
per block and operator, so the driver grew by about 30 bytes per row (tracemalloc) on a million-row run with
256-row batches, for figures latentmill never reads (BENCHMARKS.md, section 8). An execution callback
keeps the newest KEPT_BLOCK_STATS of each operator; Ray Data's end-of-run summary then describes those
blocks only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

KEPT_BLOCK_STATS = 200  # newest block statistics kept per operator (reached after 51,200 rows at batch 256)
TRIM_INTERVAL_S = 5.0


def trim_block_stats(operators: Iterable[Any], keep: int = KEPT_BLOCK_STATS) -> int:
    """Drop all but the newest `keep` block statistics of each operator; returns how many were dropped.
    An operator without such a list (another Ray Data) is left as it is."""
    dropped = 0
    for operator in operators:
        stats = getattr(operator, "_output_blocks_stats", None)
        if isinstance(stats, list) and len(stats) > keep:
            excess = len(stats) - keep
            del stats[:excess]
            dropped += excess
    return dropped


def block_stats_cap(keep: int = KEPT_BLOCK_STATS, interval_s: float = TRIM_INTERVAL_S):
    """A Ray Data ExecutionCallback class (instantiated by Ray Data without arguments) that trims the
    running dataset's operators' block statistics at most every `interval_s`."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class BlockStatsCap(ExecutionCallback):
        def __init__(self) -> None:
            self.next_trim = 0.0
            self.dropped = 0

        def on_execution_step(self, executor) -> None:
            now = time.monotonic()
            if now < self.next_trim:
                return
            self.next_trim = now + interval_s
            self.dropped += trim_block_stats(getattr(executor, "_topology", None) or (), keep)

        def after_execution_succeeds(self, executor) -> None:
            if self.dropped:
                log.debug("Ray Data's block statistics: %d dropped, the newest %d per operator kept",
                          self.dropped, keep)

    return BlockStatsCap
