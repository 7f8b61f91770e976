"""What a latentmill driver's own memory is made of, logged from inside it as JSON lines.

    GC_PROBE_LOG=/tmp/gc.jsonl PYTHONPATH=benchmarks/driver_probe \
        latentmill bench driver-memory --rows 150000 --batch-size 256 --out DIR
    TRACEMALLOC_PROBE_LOG=/tmp/traced.jsonl PYTHONPATH=benchmarks/driver_probe \
        latentmill bench driver-memory --rows 150000 --batch-size 256 --out DIR
    ARROW_PROBE_LOG=/tmp/arrow.jsonl PYTHONPATH=benchmarks/driver_probe \
        latentmill bench driver-memory --rows 150000 --batch-size 256 --out DIR

GC_PROBE_LOG: every full (generation 2) collection of Python's cyclic collector with what it freed, and
every 5 s the collections so far per generation. TRACEMALLOC_PROBE_LOG: the memory Python's allocators hold
(tracemalloc; numpy's arrays included, Arrow's and Ray's native buffers not) every second. Tracing roughly
doubles the driver's memory, so that run's memory figures are not comparable with others. ARROW_PROBE_LOG:
the bytes Arrow's default memory pool has allocated (and its backend) every second.

Python imports `sitecustomize` from PYTHONPATH at start; only the process running `latentmill.jobs.cli`
(the driver the benchmark starts) installs a probe, not the Ray workers that inherit the variable.
"""

import json
import os
import threading
import time


def _is_driver() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return b"latentmill.jobs.cli" in handle.read().split(b"\0")
    except OSError:
        return False


def _every(seconds: float, write) -> None:
    def loop():
        while True:
            time.sleep(seconds)
            write()

    threading.Thread(target=loop, daemon=True).start()


def _log(path: str):
    out = open(path, "a", buffering=1)
    started = time.time()
    return lambda **fields: out.write(json.dumps({"t": round(time.time() - started, 2), **fields}) + "\n")


def _collector(path: str) -> None:
    import gc

    log, began = _log(path), {}

    def on_collection(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            began["at"] = time.perf_counter()
        else:
            log(gen2=True, collected=info["collected"], uncollectable=info["uncollectable"],
                seconds=round(time.perf_counter() - began.get("at", time.perf_counter()), 3))

    gc.callbacks.append(on_collection)
    _every(5, lambda: log(collections=[s["collections"] for s in gc.get_stats()]))


def _python_allocations(path: str) -> None:
    import tracemalloc

    tracemalloc.start(1)
    log = _log(path)
    _every(1, lambda: log(traced_mb=round(tracemalloc.get_traced_memory()[0] / 2**20, 1)))


def _arrow_allocations(path: str) -> None:
    import pyarrow as pa

    pool, log = pa.default_memory_pool(), _log(path)
    log(backend=pool.backend_name)
    _every(1, lambda: log(arrow_mb=round(pool.bytes_allocated() / 2**20, 1)))


if _is_driver():
    if os.environ.get("GC_PROBE_LOG"):
        _collector(os.environ["GC_PROBE_LOG"])
    if os.environ.get("TRACEMALLOC_PROBE_LOG"):
        _python_allocations(os.environ["TRACEMALLOC_PROBE_LOG"])
    if os.environ.get("ARROW_PROBE_LOG"):
        _arrow_allocations(os.environ["ARROW_PROBE_LOG"])
