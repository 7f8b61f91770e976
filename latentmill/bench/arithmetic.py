"""The benchmark's arithmetic: pure functions on recorded timings (unit-tested, no Ray).

An arrival curve is a list of ``(seconds since start, cumulative rows finished)`` points, one per batch
that reached the driver, in time order.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

Curve = Sequence[tuple[float, int]]


def normalize_curve(points: Iterable[tuple[float, int]]) -> list[tuple[float, int]]:
    """Sorted by time, cumulative counts non-decreasing, repeated counts dropped."""
    curve: list[tuple[float, int]] = []
    for t, n in sorted(points):
        if curve and n <= curve[-1][1]:
            continue
        curve.append((float(t), int(n)))
    return curve


def time_to_rows(curve: Curve, rows: int) -> float | None:
    """When the first `rows` rows had arrived (None if they never did)."""
    for t, n in curve:
        if n >= rows:
            return t
    return None


def first_output_seconds(curve: Curve) -> float | None:
    return time_to_rows(curve, 1)


def steady_window(curve: Curve, lo: float = 0.2, hi: float = 0.9, not_before: float | None = None
                  ) -> tuple[float, float, int] | None:
    """(start, end, rows in between) of the steady-state window.

    The window starts at the arrival that completes `lo` of all rows (or the first arrival at or after
    `not_before`, e.g. once every actor is up, whichever is later) and ends at the arrival that completes
    `hi` of them, but never at the last arrival: the drain, where the last batches pass stages no longer
    busy with later ones and often reach the driver together (on a short run `hi` of the rows may be
    all of them). Rows in the window are those that arrived after its start, up to and including its end;
    so the rate counts whole batches between two arrivals, without the ramp-up or the drain.
    """
    if not 0 <= lo < hi <= 1:
        raise ValueError("need 0 <= lo < hi <= 1")
    if len(curve) < 2:
        return None
    total = curve[-1][1]
    start_index = next(i for i, (_, n) in enumerate(curve) if n >= lo * total)
    if not_before is not None:
        later = [i for i, (t, _) in enumerate(curve) if t >= not_before]
        if not later:
            return None
        start_index = max(start_index, later[0])
    end_index = min(next(i for i, (_, n) in enumerate(curve) if n >= hi * total), len(curve) - 2)
    if end_index <= start_index:
        end_index = len(curve) - 1
    if end_index <= start_index:
        return None
    (t0, n0), (t1, n1) = curve[start_index], curve[end_index]
    if t1 <= t0:
        return None
    return t0, t1, n1 - n0


def steady_rate(curve: Curve, lo: float = 0.2, hi: float = 0.9, not_before: float | None = None) -> float | None:
    """Rows per second in the steady-state window (see `steady_window`): the least-squares slope of the
    cumulative rows over the arrivals in the window, which a burst at either end moves less than the
    two-point rate (rows in window / its duration) does."""
    window = steady_window(curve, lo, hi, not_before)
    if window is None:
        return None
    start, end, _ = window
    points = [(t, n) for t, n in curve if start <= t <= end]
    if len(points) < 3:
        return window[2] / (end - start)
    return slope(points)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("slope of points that share one x")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def busy_fraction(busy_seconds: float, actors: float, seconds: float) -> float | None:
    """Share of the pool's actor-time spent inside batches."""
    if actors <= 0 or seconds <= 0:
        return None
    return busy_seconds / (actors * seconds)


def busy_in_window(row_seconds: Sequence[float], curve: Curve, start: float, end: float) -> float:
    """Busy seconds of the rows that arrived in (start, end].

    `row_seconds[i]` is the stage time charged to the i-th row to arrive (the manifest's per-row
    ``*_seconds``: batch time / rows), so summing it over rows sums whole batches' times.
    """
    first = next((n for t, n in curve if t >= start), None)
    last = 0
    for t, n in curve:
        if t <= end:
            last = n
    if first is None or last <= first:
        return 0.0
    return float(sum(row_seconds[first:last]))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def speedup(baseline_seconds: float | None, seconds: float | None) -> float | None:
    """How many times faster than the baseline (wall-time ratio baseline / this)."""
    return ratio(baseline_seconds, seconds)


def efficiency(measured_rate: float | None, devices: int, one_device_rate: float) -> float | None:
    """Measured rows/s against devices x one device's rate."""
    return ratio(measured_rate, devices * one_device_rate)


def linearity(rates: dict[int, float | None]) -> dict[int, float | None]:
    """rate(n) / (n * rate(1)) for every n: 1.0 is perfectly linear scaling from one device."""
    base = rates.get(1)
    return {n: ratio(rate, n * base) if base else None for n, rate in rates.items()}


def growth(before: float, after: float) -> float:
    """Relative growth (after - before) / before."""
    return (after - before) / before


def median(values: Sequence[float]) -> float | None:
    clean = sorted(v for v in values if v is not None and not math.isnan(v))
    if not clean:
        return None
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}{suffix}"
    return f"{value}{suffix}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return fmt(value) if isinstance(value, float) or value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bound_rows_per_s(devices: float, row_device_seconds: dict[str, float]) -> float:
    """The most rows/s `devices` devices can give when every stage's device time is all that costs:
    devices / the sum over stages of each row's device seconds (nothing idle, no host work)."""
    total = sum(row_device_seconds.values())
    if total <= 0:
        raise ValueError("the stages' device seconds per row must add up to more than zero")
    return devices / total


def pools_rows_per_s(pool_devices: dict[str, float], row_device_seconds: dict[str, float]) -> float:
    """The rows/s of pipelined pools on device time alone: their slowest stage's devices / its seconds
    per row."""
    return min(pool_devices[stage] / seconds for stage, seconds in row_device_seconds.items() if seconds > 0)


def parse_prices(text: str) -> dict[str, float]:
    """``h100=2.5,l4=0.8`` -> {"h100": 2.5, "l4": 0.8}: price per device-hour by device type, in order
    (the first type holds the denoisers; the second, if any, latentmill's encode and decode pools)."""
    prices: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not name.strip() or price < 0:
            raise ValueError(f"a price is TYPE=PER_HOUR, e.g. h100=2.5; got {item.strip()!r}")
        prices[name.strip()] = price
    if not prices:
        raise ValueError("no prices given; expected e.g. h100=2.5,l4=0.8")
    return prices


def cost_per_1000(rows_per_s: float | None, devices_by_type: dict[str, float], prices: dict[str, float]
                  ) -> float | None:
    """What 1,000 outputs cost at `rows_per_s` when `devices_by_type` devices are rented at `prices`
    per device-hour."""
    if not rows_per_s or rows_per_s <= 0:
        return None
    per_hour = sum(count * prices[kind] for kind, count in devices_by_type.items())
    return per_hour / 3600.0 / rows_per_s * 1000.0
