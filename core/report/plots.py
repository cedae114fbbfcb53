"""The report's figures as inline SVG: ROC, precision-recall, reliability, score histograms, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from core.report.svg import PALETTE, Series, line_chart

__all__ = [
    "histogram_chart",
    "message_chart",
    "pr_chart",
    "reliability_chart",
    "roc_chart",
    "thin_series",
    "training_charts",
]

# Per-task metric charts drawn from eval/<dataset>/<task>/<metric> tags (count-like tags are not worth a chart).
_EVAL_CHART_METRICS = ("auc", "group_auc", "pr_auc", "rce", "nrce", "logloss", "calibration")

# A labelled curve source: (legend name, curve dict or None, dashed).
Entry = tuple[str, "dict | None", bool]


def message_chart(title: str, message: str, width: int = 340, height: int = 250) -> str:
    """A placeholder the size of a chart, for a plot that is undefined (e.g. ROC of a single-class task)."""
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}"><text x="{width / 2}" y="15" text-anchor="middle" class="chart-title">'
            f'{escape(title)}</text><rect x="52" y="24" width="{width - 64}" height="{height - 62}" fill="none" '
            f'stroke="#ccc"/><text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="label">'
            f"{escape(message)}</text></svg>")


def _colored(entries: Sequence[Entry]) -> list[tuple[str, dict, bool, str]]:
    # Colours follow the entry's position, so a run keeps its colour when another entry is undefined.
    return [(name, curve, dashed, PALETTE[i % len(PALETTE)])
            for i, (name, curve, dashed) in enumerate(entries) if curve is not None]


def roc_chart(entries: Sequence[Entry], title: str = "ROC") -> str:
    """ROC curves (one per entry with a curve) over the chance diagonal."""
    drawn = _colored(entries)
    if not drawn:
        return message_chart(title, "undefined: a single class")
    series = [Series(name, c["fpr"], c["tpr"], color=col, dashed=d) for name, c, d, col in drawn]
    return line_chart(series, title=title, x_label="false positive rate", y_label="true positive rate",
                      x_range=(0, 1), y_range=(0, 1), diagonal=True, legend="lower right")


def pr_chart(entries: Sequence[Entry], title: str = "Precision-recall") -> str:
    """Precision-recall curves (one per entry with a curve)."""
    drawn = _colored(entries)
    if not drawn:
        return message_chart(title, "undefined: no positives")
    series = [Series(name, c["recall"], c["precision"], color=col, dashed=d) for name, c, d, col in drawn]
    return line_chart(series, title=title, x_label="recall", y_label="precision", x_range=(0, 1), y_range=(0, 1),
                      legend="upper right")


def reliability_chart(entries: Sequence[Entry], title: str = "Reliability") -> str:
    """Observed rate vs mean prediction per equal-weight bin, on axes zoomed to the data, with the diagonal."""
    drawn = _colored(entries)
    if not drawn:
        return message_chart(title, "undefined: no rows")
    top = max(max(c["mean_prediction"] + c["observed_rate"]) for _, c, _, _ in drawn)
    top = min(1.0, top * 1.05) if top > 0 else 1.0
    series = [Series(name, c["mean_prediction"], c["observed_rate"], color=col, dashed=d, markers=True)
              for name, c, d, col in drawn]
    return line_chart(series, title=title, x_label="mean prediction", y_label="observed rate",
                      x_range=(0, top), y_range=(0, top), diagonal=True, legend="upper left")


def histogram_chart(histogram: dict | None, title: str = "Score histogram") -> str:
    """Weighted score distributions of positives and negatives (each sums to 1)."""
    if histogram is None:
        return message_chart(title, "undefined: no rows")
    series = [Series("positives", histogram["edges"], histogram["positive"], color=PALETTE[1], steps=True),
              Series("negatives", histogram["edges"], histogram["negative"], color=PALETTE[0], steps=True)]
    return line_chart(series, title=title, x_label="prediction", y_label="share of class", legend="upper right")


def thin_series(points: Sequence[tuple[int, float]], max_points: int) -> tuple[list[float], list[float]]:
    """At most max_points evenly spaced (step, value) pairs, the first and last kept."""
    if len(points) > max_points:
        idx = np.unique(np.linspace(0, len(points) - 1, max_points).round().astype(int))
        points = [points[i] for i in idx]
    return [float(s) for s, _ in points], [float(v) for _, v in points]


def _chart_groups(tags: Sequence[str]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(chart title, y label) -> [(series name, tag)]: per-task eval metrics share a chart, as do sibling tags."""
    eval_groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    siblings: dict[str, list[tuple[str, str]]] = {}
    for tag in tags:
        parts = tag.split("/")
        if parts[0] == "eval" and len(parts) >= 4:
            # eval/<dataset>/<task>/<metric>: one chart per dataset and metric, one line per task. Oracle and
            # strata scalars (longer tags) stay in the tables.
            if len(parts) == 4 and parts[3] in _EVAL_CHART_METRICS:
                eval_groups.setdefault((f"eval/{parts[1]}: {parts[3]}", parts[3]), []).append((parts[2], tag))
            continue
        parent, _, leaf = tag.rpartition("/")
        siblings.setdefault(parent, []).append((leaf, tag))
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for parent, members in siblings.items():
        if len(members) == 1 or not parent:
            for leaf, tag in members:
                groups[(tag, leaf)] = [("", tag)]
        else:
            groups[(parent, parent.rpartition("/")[2])] = members
    groups.update(eval_groups)
    return groups


def training_charts(
    runs: Sequence[tuple[str, dict, bool]], max_points: int = 500, max_charts: int = 40
) -> tuple[list[str], list[str]]:
    """Charts of TensorBoard scalars for one run or several (label, scalars, dashed); returns (svgs, omitted)."""
    tags = sorted({tag for _, scalars, _ in runs for tag in scalars})
    groups = _chart_groups(tags)
    charts: list[str] = []
    omitted: list[str] = []
    for (title, y_label), members in groups.items():
        if len(charts) >= max_charts:
            omitted.append(title)
            continue
        series = []
        for m, (name, tag) in enumerate(members):
            for label, scalars, dashed in runs:
                if tag not in scalars:
                    continue
                x, y = thin_series(scalars[tag], max_points)
                shown = name if len(runs) == 1 else (f"{label}: {name}" if name else label)
                # Sparse series (a few evaluations) get markers: a single point draws no line.
                series.append(Series(shown, x, y, color=PALETTE[m % len(PALETTE)], dashed=dashed,
                                     markers=len(x) <= 30))
        if len(series) == 1 and len(runs) == 1:
            series[0].name = ""
        charts.append(line_chart(series, title=title, x_label="step", y_label=y_label))
    return charts, omitted
