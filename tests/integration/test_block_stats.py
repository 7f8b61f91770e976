"""Ray Data's per-block statistics in the driver stay capped on a long run."""

from __future__ import annotations

import pytest

from latentmill.pipelines.block_stats import block_stats_cap

pytestmark = pytest.mark.slow

BLOCKS, KEEP = 300, 20


def test_each_operator_keeps_its_newest_block_statistics_only(ray_local):
    import ray.data

    cap = block_stats_cap(keep=KEEP, interval_s=0.0)
    seen: dict[str, int] = {}  # operator -> most statistics it held after a step
    dropped = []

    class Watched(cap):
        def on_execution_step(self, executor) -> None:
            super().on_execution_step(executor)
            for operator in executor._topology:
                held = len(getattr(operator, "_output_blocks_stats", ()))
                seen[operator.name] = max(seen.get(operator.name, 0), held)

        def after_execution_succeeds(self, executor) -> None:
            dropped.append(self.dropped)

    dataset = ray.data.range(BLOCKS, override_num_blocks=BLOCKS).map_batches(lambda batch: batch, batch_size=None)
    dataset.context.enable_progress_bars = False
    dataset.context.custom_execution_callback_classes.append(Watched)
    assert sum(len(batch["id"]) for batch in dataset.iter_batches(batch_size=None)) == BLOCKS
    mapped = [name for name in seen if "MapBatches" in name]
    assert mapped, seen
    # Without the cap the map operator would hold one entry per block (BLOCKS).
    assert all(seen[name] <= KEEP for name in mapped), seen
    assert dropped and dropped[0] >= BLOCKS - KEEP, dropped
