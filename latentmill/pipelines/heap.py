"""Handing memory the driver has freed back to the operating system, on a long run.

Ray's threads in the driver allocate and free the bookkeeping of every block; glibc keeps what they free
in per-thread arenas, so the driver's RSS rose with the rows it had streamed although no live Python
object did (BENCHMARKS.md, section 8). `malloc_trim(0)` returns those free pages. Where the C library
has no such call (macOS, musl), nothing is done.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class HeapTrimmer:
    """Trims the heap at most once per `interval_s`; cheap to call once per batch. A trim of a fragmented
    300 MB heap takes about 10 ms (without the GIL), so every 2 s costs about 0.5% of a core."""

    def __init__(self, interval_s: float = 2.0, trim: Callable[[int], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.trim = trim if trim is not None else _malloc_trim()
        self.last = clock()

    def maybe_trim(self) -> None:
        if self.trim is None:
            return
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self.trim(0)
