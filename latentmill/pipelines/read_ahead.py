"""A bound, in rows, on how far the read runs ahead of the first actor pool.

Ray Data backpressures by bytes. Prompt rows are small, so the read and validation of a large table run
far ahead of the encoders with nothing to stop them, and blocks under Ray's inline limit (100 KB: a few
hundred prompt rows) live in the driver's heap until an encoder takes them. Measured on a 1,000,000-row
table: the driver grew by about 2.5 KB per waiting row, 570 MiB in all, until the whole table was read.
This policy holds back the operator that feeds the first pool (validation) while more than `limit` rows
wait there, so how much of the table sits in the driver no longer depends on the table's size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

POLICIES_KEY = "backpressure_policies.enabled"  # DataContext.set_config key of Ray Data's policy list


@dataclass
class ReadAhead:
    """The bound, and the most rows that waited for the first pool during a run (for the summary)."""

    limit: int
    peak_rows: int = 0


def default_limit(first_pool_batch: int, first_pool_actors: int) -> int:
    """Enough waiting rows to keep every actor of the first pool fed four batches deep, at least 1,000."""
    return max(1_000, 4 * first_pool_batch * first_pool_actors)


def install(context, read_ahead: ReadAhead) -> bool:
    """Add the bound to `context`'s backpressure policies; False (and a warning) where Ray Data lacks them."""
    try:
        from ray.data._internal.execution.backpressure_policy import (
            ENABLED_BACKPRESSURE_POLICIES,
            BackpressurePolicy,
        )
        from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator
    except ImportError as exc:  # another Ray Data: run without the bound rather than fail
        log.warning("this Ray Data has no backpressure policies to extend (%s): the read is not bounded in rows, "
                    "so the driver's memory grows with the table's size", exc)
        return False

    class RowsAheadBackpressure(BackpressurePolicy):
        """Holds back the operator that feeds the first actor pool while too many of its rows wait there.

        Only that operator (validation): its blocks are batch-sized, small enough to live in the driver.
        The read before it yields row-group-sized blocks, which go to the object store, where Ray Data's
        own byte budget bounds them. (Holding the read as well does not work: Ray Data releases a held
        operator's output whenever the operator after it has no queued input.)
        """

        @property
        def name(self) -> str:
            return "RowsAhead"

        def __init__(self, data_context, topology, resource_manager) -> None:
            super().__init__(data_context, topology, resource_manager)
            chain = list(topology)  # source to sink
            first = next((i for i, op in enumerate(chain) if isinstance(op, ActorPoolMapOperator)), 0)
            self.feeder, self.first_pool = (chain[first - 1], chain[first]) if first > 0 else (None, None)

        def _within_bound(self) -> bool:
            waiting = max(0, self.feeder.metrics.rows_task_outputs_generated
                          - self.first_pool.metrics.rows_inputs_of_submitted_tasks)
            read_ahead.peak_rows = max(read_ahead.peak_rows, waiting)
            return waiting <= read_ahead.limit

        def can_add_input(self, op: Any) -> bool:
            return op is not self.feeder or self._within_bound()

        def max_task_output_bytes_to_read(self, op: Any) -> int | None:
            # One running task of the feeder can yield many blocks (where the read is fused into it, a
            # whole read task's share of the table): stopping new tasks is not enough. Not taking a running
            # task's output pauses it (Ray holds a streaming task once two of its blocks are unread).
            return None if op is not self.feeder or self._within_bound() else 0

    # (one bound per context: a retry pass may run on the context of the pass before it)
    policies = [p for p in context.get_config(POLICIES_KEY, ENABLED_BACKPRESSURE_POLICIES)
                if p.__name__ != RowsAheadBackpressure.__name__]
    context.set_config(POLICIES_KEY, [*policies, RowsAheadBackpressure])
    return True
