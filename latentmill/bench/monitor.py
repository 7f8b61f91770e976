"""Measure Ray worker processes from outside: peak memory per actor type, when pools were up, GPU memory.

Samples, every `interval` seconds, the descendants of this process (a local Ray started by `ray.init()`
in this process runs its raylet and workers as our descendants, so other Ray instances on the machine
are never counted). A worker's type is read from its process title, which Ray sets to
``ray::MapWorker(MapBatches(DenoiseWorker))`` and the like. A pooled task worker's title changes with
each task it runs (a read, then an end-of-run statistics task), so its memory is counted under the
title it has when sampled; its CPU time under the title it first had.

USS (a process's own pages) leaves out Ray's object store: a store page that only one process has
touched (a block it wrote, or read alone) counts as that process's private page, so over a long run a
task's USS would grow with the store's use rather than with what the task keeps. The store's pages in a
process's RSS are reported apart.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# A task's title keeps its function ('MapBatches(validate_batch)', fused: 'ReadParquet->MapBatches(...)'), so
# a run's validation and its end-of-run passes count apart.
_TITLE = re.compile(rf"^ray::(?:MapWorker\(MapBatches\((?P<udf>{_NAME})\)\)|(?P<other>{_NAME}(?:\({_NAME}\))?"
                    rf"(?:->{_NAME}(?:\({_NAME}\))?)*))")
MB = 2**20
USS_INTERVAL_S = 1.0


def worker_kind(cmdline: list[str]) -> str | None:
    """'DenoiseWorker' for a Ray Data actor of that class; 'MapBatches(validate_batch)' for a task; 'IDLE' and
    other Ray names pass through."""
    if not cmdline:
        return None
    match = _TITLE.match(cmdline[0])
    if not match:
        return None
    return match.group("udf") or match.group("other")


@dataclass
class ProcessRecord:
    pid: int
    kind: str  # the first title the process had other than IDLE
    first_seen: float
    peak_gpu: int = 0
    cpu_seconds: float = 0.0  # user + system, as last sampled
    # title -> (peak RSS, peak USS outside the object store, peak object-store pages in RSS)
    peaks_by_title: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    uss_sampled_at: float = -math.inf

    def sampled(self, title: str, rss: int, uss: int = 0, store: int = 0) -> None:
        if title != "IDLE":
            old = self.peaks_by_title.get(title, (0, 0, 0))
            self.peaks_by_title[title] = (max(old[0], rss), max(old[1], uss), max(old[2], store))


def own_and_store(process) -> tuple[int, int]:
    """A process's USS outside Ray's object store, and the store's pages in its RSS, in bytes, from one
    read of its memory map (the store is a mapped file named plasma*)."""
    uss = store = 0
    for mapping in process.memory_maps(grouped=True):
        if os.path.basename(mapping.path).startswith("plasma"):
            store += mapping.rss
        else:
            uss += mapping.private_clean + mapping.private_dirty
    return uss, store


@dataclass
class ProcessMonitor:
    """A background sampler; use as a context manager around a run."""

    interval: float = 0.25
    uss: bool = True  # a read of /proc/PID/smaps, ~10 ms a process for a torch worker: once a second at most
    gpu: bool = True
    records: dict[int, ProcessRecord] = field(default_factory=dict)
    driver_peak_rss: int = 0
    other_cpu: dict[int, float] = field(default_factory=dict)  # Ray's own processes (raylet, gcs, ...)
    driver_cpu_seconds: float = 0.0
    kind_series: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (t, CPU seconds by type)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latentmill-bench-monitor", daemon=True)
        self._t0 = time.perf_counter()
        self._nvidia = self.gpu and shutil.which("nvidia-smi") is not None
        self._last_gpu = 0.0

    def __enter__(self) -> "ProcessMonitor":
        import psutil

        self._t0 = time.perf_counter()
        times = psutil.Process(os.getpid()).cpu_times()
        self._driver_cpu0 = times.user + times.system
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        self._stop.set()
        self._thread.join(timeout=10)
        times = psutil.Process(os.getpid()).cpu_times()
        self.driver_cpu_seconds = times.user + times.system - self._driver_cpu0

    def _loop(self) -> None:
        import psutil

        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            now = time.perf_counter() - self._t0
            try:
                self.driver_peak_rss = max(self.driver_peak_rss, me.memory_info().rss)
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    record = self.records.get(child.pid)
                    title = worker_kind(child.cmdline())
                    if record is None:
                        if title is None:
                            times = child.cpu_times()
                            self.other_cpu[child.pid] = times.user + times.system
                            continue
                        record = self.records[child.pid] = ProcessRecord(child.pid, title, now)
                    elif record.kind == "IDLE" and title and title != "IDLE":  # a pooled worker's first task
                        record.kind, record.first_seen = title, now
                    title = title or record.kind
                    info = child.memory_info()
                    if self.uss and title != "IDLE" and now - record.uss_sampled_at >= USS_INTERVAL_S:
                        record.uss_sampled_at = now
                        record.sampled(title, info.rss, *own_and_store(child))
                    else:
                        record.sampled(title, info.rss)
                    times = child.cpu_times()
                    record.cpu_seconds = times.user + times.system
                except psutil.Error:
                    continue
            try:
                mine = me.cpu_times()
                kinds: dict[str, float] = {"driver": mine.user + mine.system - self._driver_cpu0,
                                           "ray": sum(self.other_cpu.values())}
                for record in self.records.values():
                    kinds[record.kind] = kinds.get(record.kind, 0.0) + record.cpu_seconds
                self.kind_series.append((now, kinds))
            except psutil.Error:
                pass
            if self._nvidia and now - self._last_gpu >= 1.0:
                self._last_gpu = now
                for pid, used in _gpu_memory_by_pid().items():
                    if pid in self.records:
                        self.records[pid].peak_gpu = max(self.records[pid].peak_gpu, used)
            self._stop.wait(self.interval)

    def cpu_between(self, start: float, end: float) -> float | None:
        """CPU seconds the whole process tree used between two times (seconds since the monitor started).

        Sampled, so a process that starts and ends between two samples is missed; good for windows of
        many sampling intervals.
        """
        around = self._samples_around(start, end)
        if around is None:
            return None
        first, last = around
        return sum(last.values()) - sum(first.values())

    def cpu_between_by_kind(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by process type between two times (see `cpu_between`)."""
        around = self._samples_around(start, end)
        if around is None:
            return {}
        first, last = around
        return {kind: last[kind] - first.get(kind, 0.0) for kind in last}

    def _samples_around(self, start: float, end: float) -> tuple[dict[str, float], dict[str, float]] | None:
        """The CPU-by-type samples just before `start` and just after `end`."""
        before = [kinds for t, kinds in self.kind_series if t <= start]
        after = [kinds for t, kinds in self.kind_series if t >= end]
        if not before or not after:
            return None
        return before[-1], after[0]

    def up_at(self, expected: dict[str, int]) -> float | None:
        """Seconds (since the monitor started) when every kind had its expected count of processes."""
        times = []
        for kind, count in expected.items():
            seen = sorted(r.first_seen for r in self.records.values() if r.kind == kind)
            if len(seen) < count:
                return None
            times.append(seen[count - 1])
        return max(times) if times else None

    def cpu_summary(self) -> dict[str, float | int]:
        """CPU seconds (user + system) by process type, as last sampled; a process that exited loses at most
        one sampling interval. 'ray' is Ray's own processes (raylet, GCS, agents); 'driver' is this process
        (including the monitor's own sampling)."""
        by_kind: dict[str, float] = {}
        for record in self.records.values():
            by_kind[record.kind] = by_kind.get(record.kind, 0.0) + record.cpu_seconds
        by_kind["ray"] = sum(self.other_cpu.values())
        by_kind["driver"] = self.driver_cpu_seconds
        return {
            "total": sum(by_kind.values()),
            "by_kind": by_kind,
            "worker_processes": sum(1 for r in self.records.values()),
        }

    def summary(self, kinds: list[str] | None = None) -> dict[str, dict[str, float | int | None]]:
        """Per process title: how many processes had it, and the largest and mean peak RSS / USS in MiB
        while they had it; the largest peak GPU memory of the processes that first had it."""
        out: dict[str, dict[str, float | int | None]] = {}
        names = kinds or sorted({title for r in self.records.values() for title in r.peaks_by_title})
        for kind in names:
            peaks = [r.peaks_by_title[kind] for r in self.records.values() if kind in r.peaks_by_title]
            if not peaks:
                continue
            gpu = [r.peak_gpu for r in self.records.values() if r.kind == kind]
            out[kind] = {
                "actors": len(peaks),
                "peak_rss_mb": max(rss for rss, _, _ in peaks) / MB,
                "mean_peak_rss_mb": sum(rss for rss, _, _ in peaks) / len(peaks) / MB,
                "peak_uss_mb": (max(uss for _, uss, _ in peaks) / MB) if self.uss else None,
                "peak_object_store_rss_mb": (max(store for _, _, store in peaks) / MB) if self.uss else None,
                "peak_gpu_mb": (max(gpu, default=0) / MB) if self._nvidia else None,
            }
        return out


def _gpu_memory_by_pid() -> dict[int, int]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used: dict[int, int] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            used[int(parts[0])] = int(parts[1]) * MB
    return used
