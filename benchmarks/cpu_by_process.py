"""CPU seconds by process type while a command runs: which of Ray's processes a test suite or a job pays for.

    .venv/bin/python benchmarks/cpu_by_process.py [--top 25] -- COMMAND [ARG ...]

Runs COMMAND and reads every process's CPU time (user + system, all threads) from /proc every 0.3 s until
COMMAND exits, then sums it by process type: a Ray actor under its class (`DenoiseWorker` for
`ray::MapWorker(MapBatches(DenoiseWorker))`, as `latentmill bench` names them), a Ray task worker under the
first task it was seen running, anything else under its command line. Unlike `latentmill bench`'s monitor,
which follows its own Ray's processes, it reads every process on the machine: a test suite starts Ray
clusters of its own. A process is counted from when it was first seen, so one that lives less than 0.3 s, or
CPU spent before the first sample, is missed: the figures are a floor. Linux only.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import time

from latentmill.bench.monitor import worker_kind

TICKS = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[tuple[str, int], tuple[str, float]]:
    """(pid, start time) -> (title, CPU seconds) for every process readable now."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{pid}/cmdline") as cmdline_file:
                title = cmdline_file.read().replace("\0", " ").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        found[(pid, int(fields[19]))] = (title, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def process_type(title: str) -> str:
    """A Ray worker's type as `latentmill bench` names it (`DenoiseWorker`, `IdLedger`), else the command."""
    return worker_kind([title]) or title[:80] or "(no command line)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=25, help="process types to print")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    first_seen: dict[tuple[str, int], float] = {}
    last: dict[tuple[str, int], tuple[str, float]] = {}
    started = time.monotonic()
    child = subprocess.Popen(command)
    while True:
        for key, (title, cpu) in snapshot().items():
            first_seen.setdefault(key, cpu)
            named = last.get(key, (title, 0.0))[0]
            # A Ray worker starts as ray::IDLE and takes the name of what it runs: keep the most specific.
            # An exited process not yet reaped shows no command line: keep the one it had.
            if title and (not named.startswith("ray::") or named.startswith("ray::IDLE")):
                named = title
            last[key] = (named, cpu)
        if child.poll() is not None:
            break
        time.sleep(0.3)
    by_type: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for key, (title, cpu) in last.items():
        entry = by_type[process_type(title)]
        entry[0] += cpu - first_seen[key]
        entry[1] += 1
    print(f"command exited {child.returncode} after {time.monotonic() - started:.0f} s")
    print("| CPU s | processes | process type |\n|---|---|---|")
    for name, (cpu, count) in sorted(by_type.items(), key=lambda item: -item[1][0])[:args.top]:
        if cpu >= 0.05:
            print(f"| {cpu:.1f} | {count} | {name} |")


if __name__ == "__main__":
    main()
