"""A stage actor loads with the cyclic garbage collector paused, collects once, and freezes what stays."""

from __future__ import annotations

import gc
import weakref

import pytest

from latentmill.actors.stages import collector_paused_then_frozen


class Node:
    def __init__(self) -> None:
        self.partner: Node | None = None


def cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.partner, b.partner = b, a
    return weakref.ref(a)


@pytest.fixture
def restore_collector():
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable() if was_enabled else gc.disable()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_load_runs_without_collections_then_garbage_goes_and_survivors_are_frozen(restore_collector,
                                                                                      enabled_before):
    gc.enable() if enabled_before else gc.disable()
    gc.unfreeze()
    with collector_paused_then_frozen():
        assert not gc.isenabled()
        collections_before = sum(generation["collections"] for generation in gc.get_stats())
        garbage = cycle()
        kept = Node()
        kept.partner = kept
        loaded = [Node() for _ in range(50_000)]  # enough to start collections were the collector on
        assert sum(generation["collections"] for generation in gc.get_stats()) == collections_before
        assert garbage() is not None  # a cycle waits for the collector
    assert garbage() is None
    assert gc.isenabled() is enabled_before
    assert gc.get_freeze_count() >= len(loaded)
    assert not any(kept is tracked for tracked in gc.get_objects())  # frozen: in no generation


def test_the_collector_comes_back_when_the_load_fails(restore_collector):
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused_then_frozen():
        raise RuntimeError("the model could not load")
    assert gc.isenabled()
