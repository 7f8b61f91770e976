"""A stage actor loads without full garbage collections, collects once, and freezes what stays loaded."""

from __future__ import annotations

import gc
import weakref

import pytest

from latentmill.actors.stages import full_collections_paused_then_frozen


class Node:
    def __init__(self) -> None:
        self.partner: Node | None = None


def cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.partner, b.partner = b, a
    return weakref.ref(a)


def collections(generation: int) -> int:
    return gc.get_stats()[generation]["collections"]


@pytest.fixture
def restore_collector():
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable() if was_enabled else gc.disable()


def test_the_load_runs_young_collections_only_then_garbage_goes_and_survivors_are_frozen(restore_collector):
    gc.enable()
    gc.unfreeze()
    thresholds = gc.get_threshold()
    with full_collections_paused_then_frozen():
        full_before, young_before = collections(2), collections(0)
        died_young = cycle()
        loaded = [Node() for _ in range(200_000)]  # enough for young collections, and full ones were they on
        assert collections(0) > young_before and died_young() is None  # a young cycle goes during the load
        assert collections(2) == full_before
        gc.collect(0)  # so that no young collection runs before the check below
        kept = Node()
        kept.partner = kept
        left_over = cycle()
        assert left_over() is not None
    assert left_over() is None  # the one collection after the load
    assert gc.get_threshold() == thresholds and gc.isenabled()
    assert gc.get_freeze_count() >= len(loaded)
    assert not any(kept is tracked for tracked in gc.get_objects())  # frozen: in no generation


def test_a_disabled_collector_stays_disabled_and_thresholds_return_when_the_load_fails(restore_collector):
    gc.disable()
    thresholds = gc.get_threshold()
    with pytest.raises(RuntimeError), full_collections_paused_then_frozen():
        raise RuntimeError("the model could not load")
    assert not gc.isenabled() and gc.get_threshold() == thresholds
