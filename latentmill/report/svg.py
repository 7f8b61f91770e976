"""Small inline SVG plots, computed in Python: the page loads no plotting library and no font."""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#2f6fdf", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5c940d")


def number(value: float) -> str:
    """A short label: 3 significant digits, no exponent for everyday magnitudes."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2e}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on already sorted values."""
    if not sorted_values:
        return 0.0
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def histogram(values: Sequence[float], title: str, unit: str = "s", bins: int = 30,
              width: int = 240, height: int = 150) -> str:
    """A histogram of `values` between their minimum and maximum, with the median and p90 marked."""
    data = sorted(float(v) for v in values)
    if not data:
        return f'<p class="muted">{escape(title)}: no values</p>'
    low, high = data[0], data[-1]
    if high - low < 1e-12:
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    counts = [0] * bins
    step = (high - low) / bins
    for value in data:
        counts[min(int((value - low) / step), bins - 1)] += 1
    left, right, top, bottom = 36, 8, 18, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts)
    bar_w = plot_w / bins
    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}">',
             f'<text x="{left}" y="12" class="t">{escape(title)}</text>']
    for index, count in enumerate(counts):
        if not count:
            continue
        bar_h = plot_h * count / peak
        x = left + index * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                     f'height="{bar_h:.1f}" fill="{PALETTE[0]}"><title>{number(low + index * step)}-'
                     f'{number(low + (index + 1) * step)} {unit}: {count} rows</title></rect>')
    for name, q, color in (("p50", 0.5, PALETTE[1]), ("p90", 0.9, PALETTE[2])):
        x = left + plot_w * (percentile(data, q) - low) / (high - low)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{color}" '
                     f'stroke-dasharray="3 2"><title>{name} {number(percentile(data, q))} {unit}</title></line>')
        parts.append(f'<text x="{x + 2:.1f}" y="{top + 9}" class="m" fill="{color}">{name}</text>')
    axis_y = top + plot_h
    parts += [
        f'<line x1="{left}" x2="{left + plot_w}" y1="{axis_y}" y2="{axis_y}" class="axis"/>',
        f'<text x="{left}" y="{axis_y + 14}" class="m">{number(low)} {unit}</text>',
        f'<text x="{left + plot_w}" y="{axis_y + 14}" class="m" text-anchor="end">{number(high)} {unit}</text>',
        f'<text x="{left - 4}" y="{top + 8}" class="m" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{axis_y}" class="m" text-anchor="end">0</text>',
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" class="m" text-anchor="middle">seconds per row '
        f'({len(data)} rows)</text>',
        "</svg>",
    ]
    return "".join(parts)


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], x_label: str, y_label: str,
               width: int = 400, height: int = 170) -> str:
    """Step lines (cumulative counts), one per series, with a legend."""
    points = [point for _, line in series for point in line]
    if not points:
        return '<p class="muted">nothing to plot</p>'
    max_x = max(x for x, _ in points) or 1.0
    max_y = max(y for _, y in points) or 1.0
    left, right, top, bottom = 48, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + plot_w * x / max_x

    def sy(y: float) -> float:
        return top + plot_h * (1 - y / max_y)

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height + 16 * len(series)}" width="{width}" '
             f'height="{height + 16 * len(series)}" role="img" aria-label="{escape(y_label)} over {escape(x_label)}">']
    for fraction in (0.25, 0.5, 0.75, 1.0):
        y = sy(max_y * fraction)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" class="m" text-anchor="end">'
                     f'{number(max_y * fraction)}</text>')
    for index, (label, line) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        ordered = sorted(line)
        path = []
        previous_y = 0.0
        for x, y in ordered:
            path.append(f"{sx(x):.1f},{sy(previous_y):.1f} {sx(x):.1f},{sy(y):.1f}")
            previous_y = y
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(path)}">'
                     f'<title>{escape(label)}</title></polyline>')
        for x, y in ordered:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                         f'<title>{escape(label)}: {number(y)} after {number(x)} s</title></circle>')
        legend_y = height + 12 + 16 * index
        parts.append(f'<rect x="{left}" y="{legend_y - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + 14}" y="{legend_y + 1}" class="m">{escape(label)}</text>')
    axis_y = top + plot_h
    parts += [
        f'<line x1="{left}" x2="{left + plot_w}" y1="{axis_y}" y2="{axis_y}" class="axis"/>',
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{axis_y}" class="axis"/>',
        f'<text x="{left}" y="{axis_y + 14}" class="m">0</text>',
        f'<text x="{left + plot_w}" y="{axis_y + 14}" class="m" text-anchor="end">{number(max_x)} s</text>',
        f'<text x="{left + plot_w / 2:.1f}" y="{axis_y + 28}" class="m" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="12" y="{top + plot_h / 2:.1f}" class="m" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text>',
        "</svg>",
    ]
    return "".join(parts)
