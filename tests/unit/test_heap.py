"""The driver's heap trimming: how often it trims, and that a trim gives freed memory back."""

from __future__ import annotations

import threading

import pytest

from latentmill.pipelines.heap import HeapTrimmer, _malloc_trim


def test_trims_at_most_once_per_interval():
    now, calls = [0.0], []
    trimmer = HeapTrimmer(interval_s=10.0, trim=calls.append, clock=lambda: now[0])
    for t in (1.0, 9.9, 10.0, 12.0, 19.9, 20.5, 40.0):
        now[0] = t
        trimmer.maybe_trim()
    assert calls == [0, 0, 0]  # malloc_trim(0) at 10.0, 20.5 and 40.0


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc on Linux)")
def test_a_trim_returns_what_another_thread_freed():
    import psutil

    process = psutil.Process()
    kept = []

    def allocate_and_free() -> None:
        blocks = [bytes(2000) for _ in range(50_000)]  # about 100 MB from this thread's malloc arena
        kept.append(blocks.pop())  # the newest block pins the top of the arena: glibc cannot shrink it
        del blocks

    thread = threading.Thread(target=allocate_and_free)
    thread.start()
    thread.join()
    before = process.memory_info().rss
    HeapTrimmer(interval_s=0.0).maybe_trim()
    assert before - process.memory_info().rss > 50 * 2**20
