"""curves.json (core.metrics_curves.compute_curves) over every rank's rows without gathering them: the ROC and
precision-recall curves and the reliability diagram from the tie blocks sorted across the ranks
(core/sharded_sort.py), the score histogram from per-rank bin counts added together.

Curves are thinned as core.metrics_curves.downsample_curve does: each rank measures its stretch of the curve, the
stretches' lengths are added in curve order, and each rank picks the points where the running length first reaches
each target; only the picked points (at most num_points) travel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.collective import Collective
from core.metrics_curves import HISTOGRAM_BINS, RELIABILITY_BINS
from core.sharded_sort import key_scores, score_keys, segment_scans, sort_blocks

__all__ = ["sharded_curves"]


def _thin(comm: Collective, x: np.ndarray, y: np.ndarray, head_x: float, head_y: float | None,
          num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """core.metrics_curves.downsample_curve of the curve [(head_x, head_y)] + every rank's points, where rank
    world − 1 holds the first stretch and rank 0 the last (x, y: this rank's stretch in curve order). head_y None:
    the y of the curve's first point after the head."""
    n = x.size
    summary = np.array([[n, x[0] if n else 0, y[0] if n else 0, x[-1] if n else 0, y[-1] if n else 0,
                         x.min() if n else np.inf, x.max() if n else -np.inf,
                         y.min() if n else np.inf, y.max() if n else -np.inf]], dtype=np.float64)
    curve = [s[0] for s in reversed(comm.gather(summary))]  # in curve order
    me = comm.world - 1 - comm.rank
    filled = [s for s in curve if s[0] > 0]
    if head_y is None:
        head_y = filled[0][2]
    total = 1 + int(sum(s[0] for s in curve))
    start = 1 + int(sum(s[0] for s in curve[:me]))
    if total <= num_points:
        points = comm.gather(np.stack([x, y], axis=1))[::-1]
        every = np.concatenate([np.array([[head_x, head_y]]), *points])
        return every[:, 0], every[:, 1]
    span_x = max(max(head_x, *(s[6] for s in filled)) - min(head_x, *(s[5] for s in filled)), 1e-300)
    span_y = max(max(head_y, *(s[8] for s in filled)) - min(head_y, *(s[7] for s in filled)), 1e-300)
    before = [s for s in curve[:me] if s[0] > 0]
    previous = (before[-1][3], before[-1][4]) if before else (head_x, head_y)
    steps = np.hypot(np.diff(np.r_[previous[0], x]) / span_x, np.diff(np.r_[previous[1], y]) / span_y)
    running = np.cumsum(steps)
    stretch = np.array([[running[-1] if n else 0.0]])
    lengths_by_rank = [s[0, 0] for s in reversed(comm.gather(stretch))]
    # Running sums in curve order, as every rank computes them: the previous stretch's last length is my offset.
    offsets = [0.0]
    for length in lengths_by_rank:
        offsets.append(offsets[-1] + length)
    length_here = offsets[me] + running
    last = offsets[-1]
    candidates = np.zeros((0, 4))  # [global index, x, y, picked by a target]
    if n:
        picked = np.zeros(0, dtype=np.int64)
        if last > 0:
            targets = np.linspace(0.0, last, num_points)
            picked = np.searchsorted(length_here, targets[(targets > offsets[me]) & (targets <= length_here[-1])])
        local = np.unique(np.r_[picked, [n - 1] if start + n == total else []].astype(np.int64))
        candidates = np.stack([start + local, x[local], y[local], np.isin(local, picked)], axis=1)
    # The head is picked by the target 0.
    found = np.concatenate([np.array([[0, head_x, head_y, 1.0]]), *comm.gather(candidates)])
    if last > 0:
        chosen = np.unique(found[found[:, 3] > 0, 0].astype(np.int64))
        chosen[0], chosen[-1] = 0, total - 1  # as downsample_curve: the first and last points always
        chosen = np.unique(chosen)
    else:
        chosen = np.array([0, total - 1])
    lookup = dict(zip(found[:, 0].astype(np.int64).tolist(), range(found.shape[0])))
    rows = found[[lookup[i] for i in chosen.tolist()]]
    return rows[:, 1], rows[:, 2]


def _column_curves(comm: Collective, p32: np.ndarray, y: np.ndarray, w: np.ndarray, num_points: int,
                   full: bool) -> dict:
    """One prediction column's curves (roc and pr; with full also reliability and histogram)."""
    p = p32.astype(np.float64)
    keep = np.isfinite(p) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    p32, p, y, w = p32[keep], p[keep], y[keep], w[keep]
    keys, values = sort_blocks(comm, score_keys(p32), np.stack([w * y, w * (1.0 - y)], axis=1))
    values = np.c_[values, values[:, 0] + values[:, 1]]
    below, from_top = segment_scans(comm, keys >> 32, values)
    pos_total, neg_total, weight_total, rows = comm.sum([values[:, 0].sum(), values[:, 1].sum(), values[:, 2].sum(),
                                                         p.size])
    out: dict = {"roc": None, "pr": None}
    # This rank's stretch of each curve, in curve order (decreasing score).
    true_pos, false_pos = from_top[::-1, 0], from_top[::-1, 1]
    if pos_total > 0 and neg_total > 0:
        roc = _thin(comm, false_pos / neg_total, true_pos / pos_total, 0.0, 0.0, num_points)
        out["roc"] = {"fpr": roc[0].tolist(), "tpr": roc[1].tolist()}
    if pos_total > 0:
        pr = _thin(comm, true_pos / pos_total, true_pos / (true_pos + false_pos), 0.0, None, num_points)
        out["pr"] = {"recall": pr[0].tolist(), "precision": pr[1].tolist()}
    if not full:
        return out
    out["reliability"] = out["histogram"] = None
    if rows == 0:
        return out
    scores = key_scores(keys)
    bins = np.minimum((below[:, 2] / weight_total * RELIABILITY_BINS).astype(np.int64), RELIABILITY_BINS - 1)
    weight, weighted_score, positive = comm.sum(np.stack([np.bincount(bins, values[:, 2], RELIABILITY_BINS),
                                                          np.bincount(bins, scores * values[:, 2], RELIABILITY_BINS),
                                                          np.bincount(bins, values[:, 0], RELIABILITY_BINS)]))
    used = weight > 0
    out["reliability"] = {"mean_prediction": (weighted_score[used] / weight[used]).tolist(),
                          "observed_rate": (positive[used] / weight[used]).tolist(), "weight": weight[used].tolist()}
    top = float(comm.max([p.max() if p.size else -np.inf])[0])
    top = top if top > 0 else 1.0
    histogram_bins = np.minimum((p / top * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    counts = comm.sum(np.stack([np.bincount(histogram_bins, w * y, HISTOGRAM_BINS),
                                np.bincount(histogram_bins, w * (1.0 - y), HISTOGRAM_BINS)]))
    histogram = {"edges": np.linspace(0.0, top, HISTOGRAM_BINS + 1).tolist()}
    for name, mass in zip(("positive", "negative"), counts):
        histogram[name] = (mass / mass.sum() if mass.sum() > 0 else mass).tolist()
    out["histogram"] = histogram
    return out


def sharded_curves(
    comm: Collective,
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    task_names: Sequence[str],
    oracle: np.ndarray | None = None,
    num_points: int = 200,
) -> dict:
    """core.metrics_curves.compute_curves over every rank's rows (float32 predictions and oracle [n, T]).
    Collective."""
    if predictions.ndim != 2 or predictions.shape[1] != len(task_names) or labels.shape != predictions.shape:
        raise ValueError(f"predictions and labels must have shape [N, {len(task_names)}], "
                         f"got {predictions.shape} and {labels.shape}")
    tasks = {}
    for t, task in enumerate(task_names):
        y, w = labels[:, t].astype(np.float64), weights[:, t].astype(np.float64)
        entry = _column_curves(comm, np.ascontiguousarray(predictions[:, t]), y, w, num_points, full=True)
        if oracle is not None:
            entry["oracle"] = _column_curves(comm, np.ascontiguousarray(oracle[:, t]), y, w, num_points, full=False)
        tasks[task] = entry
    return tasks
