"""Python's cyclic garbage collector in a latentmill driver: every full (generation 2) collection, with
what it freed, and every 5 s the collector's counts, as JSON lines in $GC_PROBE_LOG.

    GC_PROBE_LOG=/tmp/gc.jsonl PYTHONPATH=benchmarks/gc_probe \
        latentmill bench driver-memory --rows 150000 --batch-size 256 --out DIR

Python imports `sitecustomize` at start from PYTHONPATH; only the process running `latentmill.jobs.cli`
(the driver the benchmark starts) installs the probe, not Ray's workers that inherit the variable.
"""
import os

def _install():
    path = os.environ.get("GC_PROBE_LOG")
    if not path:
        return
    try:
        cmdline = open("/proc/self/cmdline", "rb").read().split(b"\0")
    except OSError:
        return
    if b"latentmill.jobs.cli" not in cmdline:
        return
    import gc, threading, time, json
    out = open(path, "a", buffering=1)
    t0 = time.time()
    state = {}

    def callback(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            state["start"] = time.perf_counter()
        else:
            out.write(json.dumps({"t": round(time.time() - t0, 2), "gen2": True, "collected": info["collected"],
                                  "uncollectable": info["uncollectable"],
                                  "seconds": round(time.perf_counter() - state.get("start", time.perf_counter()), 3)}) + "\n")

    gc.callbacks.append(callback)

    def sampler():
        while True:
            time.sleep(5)
            out.write(json.dumps({"t": round(time.time() - t0, 2), "count": gc.get_count(),
                                  "stats": [s["collections"] for s in gc.get_stats()]}) + "\n")

    threading.Thread(target=sampler, daemon=True).start()

_install()
