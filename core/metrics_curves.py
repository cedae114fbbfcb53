"""Exact evaluation curves (ROC, precision-recall, reliability, score histograms) and the curves.json schema.

ROC and precision-recall curves are computed exactly, one point per distinct score, then thinned to at most
`num_points` points for plotting by keeping points evenly spaced along the curve's length (every kept point is a
point of the exact curve, the first and last included). Reliability bins hold equal weight, so a task with a 1%
positive rate still gets bins across its whole score range.

curves.json (schema_version 1), written next to metrics.json::

    {
      "schema_version": 1, "dataset": ..., "step": ..., "checkpoint": ...,   # as in metrics.json
      "tasks": {
        "<task>": {
          "roc": {"fpr": [...], "tpr": [...]} | null,                  # null for a single-class task
          "pr": {"recall": [...], "precision": [...]} | null,          # null without positives
          "reliability": {"mean_prediction": [...], "observed_rate": [...], "weight": [...]} | null,
          "histogram": {"edges": [...], "positive": [...], "negative": [...]} | null,  # each class sums to 1
          "oracle": {"roc": ..., "pr": ...}                            # only with oracle probabilities
        }
      }
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.metrics import SCHEMA_VERSION, tie_blocks

__all__ = [
    "compute_curves",
    "curves_document",
    "downsample_curve",
    "pr_curve",
    "reliability_curve",
    "roc_curve",
    "score_histogram",
    "task_curves",
]

RELIABILITY_BINS = 20
HISTOGRAM_BINS = 40


def _usable(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.isfinite(p) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    return p[keep], y[keep], w[keep]


def downsample_curve(x: np.ndarray, y: np.ndarray, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most num_points points of the curve, evenly spaced along its length, first and last always kept."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= num_points:
        return x, y
    span_x = max(float(np.ptp(x)), 1e-300)
    span_y = max(float(np.ptp(y)), 1e-300)
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(x) / span_x, np.diff(y) / span_y))]
    if length[-1] <= 0:
        idx = np.array([0, x.size - 1])
    else:
        targets = np.linspace(0.0, length[-1], num_points)
        idx = np.unique(np.clip(np.searchsorted(length, targets), 0, x.size - 1))
        idx[0], idx[-1] = 0, x.size - 1
        idx = np.unique(idx)
    return x[idx], y[idx]


def roc_curve(predictions: Any, labels: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact weighted ROC (fpr, tpr) from (0, 0) to (1, 1), one point per distinct score; None if single-class."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    p, y, w = _usable(p, y, w)
    _, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    if pos.sum() <= 0 or neg.sum() <= 0:
        return None
    tpr = np.r_[0.0, np.cumsum(pos[::-1]) / pos.sum()]
    fpr = np.r_[0.0, np.cumsum(neg[::-1]) / neg.sum()]
    return fpr, tpr


def pr_curve(predictions: Any, labels: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact weighted (recall, precision), thresholds decreasing, starting at recall 0; None without positives."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    p, y, w = _usable(p, y, w)
    _, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    if pos.sum() <= 0:
        return None
    true_pos = np.cumsum(pos[::-1])
    precision = true_pos / (true_pos + np.cumsum(neg[::-1]))
    recall = true_pos / pos.sum()
    return np.r_[0.0, recall], np.r_[precision[0], precision]


def reliability_curve(predictions: Any, labels: Any, weights: Any = None, num_bins: int = RELIABILITY_BINS) -> dict | None:
    """Mean prediction vs observed rate in num_bins bins of equal weight (by increasing score); None on no rows."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    p, y, w = _usable(p, y, w)
    if p.size == 0:
        return None
    # Bins are assigned per distinct score, so tied rows share a bin and the result does not depend on row order.
    scores, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    block_weight = pos + neg
    before = np.cumsum(block_weight) - block_weight
    bins = np.minimum((before / block_weight.sum() * num_bins).astype(np.int64), num_bins - 1)
    weight = np.bincount(bins, block_weight, num_bins)
    used = weight > 0
    return {
        "mean_prediction": (np.bincount(bins, scores * block_weight, num_bins)[used] / weight[used]).tolist(),
        "observed_rate": (np.bincount(bins, pos, num_bins)[used] / weight[used]).tolist(),
        "weight": weight[used].tolist(),
    }


def score_histogram(predictions: Any, labels: Any, weights: Any = None, num_bins: int = HISTOGRAM_BINS) -> dict | None:
    """Weighted score histograms of positives and negatives over [0, max score], each normalized to sum 1."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    p, y, w = _usable(p, y, w)
    if p.size == 0:
        return None
    top = float(p.max()) if p.max() > 0 else 1.0
    edges = np.linspace(0.0, top, num_bins + 1)
    bins = np.minimum((p / top * num_bins).astype(np.int64), num_bins - 1)
    out = {"edges": edges.tolist()}
    for name, mass in (("positive", w * y), ("negative", w * (1.0 - y))):
        counts = np.bincount(bins, mass, num_bins)
        out[name] = (counts / counts.sum() if counts.sum() > 0 else counts).tolist()
    return out


def _pair(curve: tuple[np.ndarray, np.ndarray] | None, keys: tuple[str, str], num_points: int) -> dict | None:
    if curve is None:
        return None
    x, y = downsample_curve(curve[0], curve[1], num_points)
    return {keys[0]: x.tolist(), keys[1]: y.tolist()}


def task_curves(predictions: Any, labels: Any, weights: Any = None, oracle: Any = None, num_points: int = 200) -> dict:
    """One task's entry of curves.json: exact curves thinned to num_points points."""
    out = {
        "roc": _pair(roc_curve(predictions, labels, weights), ("fpr", "tpr"), num_points),
        "pr": _pair(pr_curve(predictions, labels, weights), ("recall", "precision"), num_points),
        "reliability": reliability_curve(predictions, labels, weights),
        "histogram": score_histogram(predictions, labels, weights),
    }
    if oracle is not None:
        out["oracle"] = {
            "roc": _pair(roc_curve(oracle, labels, weights), ("fpr", "tpr"), num_points),
            "pr": _pair(pr_curve(oracle, labels, weights), ("recall", "precision"), num_points),
        }
    return out


def compute_curves(
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    task_names: Sequence[str],
    oracle: np.ndarray | None = None,
    num_points: int = 200,
) -> dict:
    """The "tasks" part of curves.json from whole-dataset [N, T] arrays."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.ones_like(labels) if weights is None else np.asarray(weights, dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[1] != len(task_names) or labels.shape != predictions.shape:
        raise ValueError(f"predictions and labels must have shape [N, {len(task_names)}], "
                         f"got {predictions.shape} and {labels.shape}")
    return {
        task: task_curves(
            predictions[:, t], labels[:, t], weights[:, t], None if oracle is None else np.asarray(oracle)[:, t],
            num_points,
        )
        for t, task in enumerate(task_names)
    }


def curves_document(tasks: dict, metrics: dict | None = None) -> dict:
    """Wrap per-task curves into the curves.json document, copying dataset/step/checkpoint from metrics.json."""
    metrics = metrics or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": metrics.get("dataset"),
        "step": metrics.get("step"),
        "checkpoint": metrics.get("checkpoint"),
        "tasks": tasks,
    }
