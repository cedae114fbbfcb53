"""A small inline-SVG line chart (lines, step lines, markers, a diagonal), so reports need no plotting library."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Series", "format_number", "line_chart", "nice_ticks"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
# Clip-path ids must be unique within a page that inlines many charts.
_CLIP_IDS = itertools.count()
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 12, 24, 38


@dataclass
class Series:
    """One line of a chart. With steps=True, x holds len(y) + 1 bin edges and y is drawn as a histogram outline."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    dashed: bool = False
    steps: bool = False
    markers: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    power = 10 ** math.floor(math.log10((high - low) / max(count - 1, 1)))

    def ticks_for(step: float) -> list[float]:
        first = math.ceil(low / step - 1e-9)
        last = math.floor(high / step + 1e-9)
        # Twelve significant digits drop float noise (0.30000000000000004) at any scale; rounding to twelve decimals
        # made every tick of a range below 1e-12 zero.
        return [float(f"{i * step:.12g}") for i in range(first, last + 1)]

    candidates = [ticks_for(m * power) for m in (1, 2, 2.5, 5, 10)]
    return min(reversed(candidates), key=lambda ticks: abs(len(ticks) - count))


def format_number(value: float, step: float | None = None) -> str:
    """A short label: 12k, 3.5M, or as many decimals as the tick step needs."""
    magnitude = abs(value)
    if magnitude >= 1e4 and (step is None or step >= 1000):
        for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if magnitude >= scale:
                return f"{value / scale:.{0 if value % scale == 0 else 1}f}{unit}"
    if step is not None and step > 0:
        # As many decimals as the step needs (0.25 needs two, 0.5 one).
        decimals = next((d for d in range(10) if abs(round(step, d) - step) <= step * 1e-6), 10)
        return f"{value:.{decimals}f}"
    return f"{value:.4g}"


def _points(series: Series) -> list[tuple[float, float]]:
    if not series.steps:
        return list(zip(map(float, series.x), map(float, series.y)))
    edges, values = list(map(float, series.x)), list(map(float, series.y))
    out: list[tuple[float, float]] = []
    for i, v in enumerate(values):
        out += [(edges[i], v), (edges[i + 1], v)]
    if out:
        out = [(out[0][0], 0.0), *out, (out[-1][0], 0.0)]
    return out


def _extent(values: list[float], given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        return given
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        pad = abs(high) * 0.05 or 0.5
        low, high = low - pad, high + pad
    # Widen to whole tick steps so the extreme values do not sit on the frame.
    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.0
    if step > 0:
        low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    return low, high


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    width: int = 340,
    height: int = 250,
    legend: str = "upper right",
) -> str:
    """An <svg> element (no external references) drawing the series on shared, labelled axes.

    `legend` places the names inside the plot ("upper right", "lower right", "upper left", "lower left"); with more
    than four named series the legend is a column to the right of the plot and the chart grows wider.
    """
    drawn = [(s, _points(s)) for s in series]
    x_low, x_high = _extent([x for _, pts in drawn for x, _ in pts], x_range)
    y_low, y_high = _extent([y for _, pts in drawn for _, y in pts], y_range)
    left, top = _MARGIN_LEFT, _MARGIN_TOP
    plot_w, plot_h = width - _MARGIN_LEFT - _MARGIN_RIGHT, height - _MARGIN_TOP - _MARGIN_BOTTOM
    named = [(i, s) for i, s in enumerate(series) if s.name]
    legend_w = 30 + 6 * max((len(s.name) for _, s in named), default=0)
    # More than a few names would hide the lines: they go in a column right of the plot instead.
    outside = len(named) > 4
    if outside:
        width += legend_w + 4
        height = max(height, top + 13 * len(named) + 8)

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_low) / (y_high - y_low) * plot_h

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left + plot_w / 2:.1f}" y="15" text-anchor="middle" class="chart-title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    x_ticks, y_ticks = nice_ticks(x_low, x_high), nice_ticks(y_low, y_high)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else None
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else None
    for t in x_ticks:
        parts.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + plot_h}" class="grid"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 13}" text-anchor="middle" class="tick">'
                     f"{format_number(t, x_step)}</text>")
    for t in y_ticks:
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" class="tick">'
                     f"{format_number(t, y_step)}</text>")
    if x_label:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="label">'
                     f"{escape(x_label)}</text>")
    if y_label:
        parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="label" '
                     f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text>')
    clip = f"clip{next(_CLIP_IDS)}"
    parts.append(f'<clipPath id="{clip}"><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>'
                 f'</clipPath><g clip-path="url(#{clip})">')
    if diagonal:
        low, high = max(x_low, y_low), min(x_high, y_high)
        if high > low:
            parts.append(f'<line x1="{px(low):.1f}" y1="{py(low):.1f}" x2="{px(high):.1f}" y2="{py(high):.1f}" '
                         'stroke="#888" stroke-dasharray="3,3"/>')
    for i, (s, pts) in enumerate(drawn):
        color = s.color or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6,4"' if s.dashed else ""
        for run in _finite_runs(pts):
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
            if s.markers:
                parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in run]
    parts.append("</g>")
    named = [(i, s) for i, s in enumerate(series) if s.name]
    if named:
        box_w = legend_w
        if outside:
            box_x, box_y = left + plot_w + _MARGIN_RIGHT, top
        else:
            box_x = left + 4 if "left" in legend else left + plot_w - box_w - 4
            box_y = top + 4 if "upper" in legend else top + plot_h - 13 * len(named) - 6
        parts.append(f'<rect x="{box_x}" y="{box_y}" width="{box_w}" height="{13 * len(named) + 2}" '
                     'fill="white" fill-opacity="0.8"/>')
        for row, (i, s) in enumerate(named):
            color = s.color or PALETTE[i % len(PALETTE)]
            y = box_y + 11 + 13 * row
            dash = ' stroke-dasharray="6,4"' if s.dashed else ""
            parts.append(f'<line x1="{box_x + 3}" y1="{y - 4}" x2="{box_x + 21}" y2="{y - 4}" stroke="{color}" '
                         f'stroke-width="2"{dash}/><text x="{box_x + 25}" y="{y}" class="legend">'
                         f"{escape(s.name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]

