"""The read waits for the first actor pool: rows waiting for it stay near `ray.read_ahead_rows`."""

from __future__ import annotations

import time

import pytest

from latentmill.pipelines import read_ahead

ROWS, BATCH = 4_000, 16


class SlowFirstPool:
    """Stands in for the text encoder: slower than the read, as every real encoder is."""

    def __call__(self, batch):
        time.sleep(0.004)
        return batch


def _peak_rows_waiting(limit: int, read_tasks: int) -> int:
    import ray.data

    dataset = ray.data.range(ROWS, override_num_blocks=read_tasks)
    # Validation on whole read blocks; Ray Data fuses it (and the split below) into the read's tasks.
    dataset = dataset.map_batches(lambda batch: batch, batch_size=None)
    dataset = dataset.repartition(target_num_rows_per_block=BATCH)  # as the job does before the first pool
    dataset = dataset.map_batches(SlowFirstPool, batch_size=BATCH, compute=ray.data.ActorPoolStrategy(size=1),
                                  num_cpus=0.5)
    bound = read_ahead.ReadAhead(limit)
    dataset.context.enable_progress_bars = False
    assert read_ahead.install(dataset.context, bound)
    assert sum(len(batch["id"]) for batch in dataset.iter_batches(batch_size=None)) == ROWS
    return bound.peak_rows


@pytest.mark.slow
@pytest.mark.parametrize("read_tasks", [40, 4], ids=["small-read-tasks", "a-quarter-of-the-table-per-task"])
def test_the_read_waits_while_the_first_pool_has_enough_rows_waiting(ray_local, read_tasks):
    unbounded = _peak_rows_waiting(limit=10 * ROWS, read_tasks=read_tasks)
    bounded = _peak_rows_waiting(limit=64, read_tasks=read_tasks)
    # Without the bound the read runs far ahead of the slow pool (these rows would sit in the driver).
    assert unbounded >= ROWS // 5, unbounded
    # With it, the bound plus what running read tasks yield before they are held (a few blocks each,
    # more on a busy machine): far from the table. Holding only new read tasks let 2,400 rows wait
    # where each task reads a quarter of the table.
    assert bounded <= ROWS // 4, bounded


def test_the_default_bound_keeps_each_actor_of_the_first_pool_four_batches_deep():
    assert read_ahead.default_limit(first_pool_batch=256, first_pool_actors=2) == 2048
    assert read_ahead.default_limit(first_pool_batch=4, first_pool_actors=1) == 1000
