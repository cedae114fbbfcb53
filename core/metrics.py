"""Exact binary-classification metrics (weighted, sort-based, no sampling or binning) and the metrics.json schema.

Definitions, for predictions p in [0, 1], labels y in [0, 1] and weights w >= 0 of one task (a row with a fractional
label counts as a positive with weight w·y and as a negative with weight w·(1 − y)):

- count: Σw (the weighted count); rows: number of rows used (finite values and w > 0).
- pos_rate: ȳ = Σw·y / Σw.
- auc: probability that a random positive scores above a random negative, pairs weighted by w⁺·w⁻, ties count ½.
- logloss: −Σw·[y·log p + (1 − y)·log(1 − p)] / Σw, with p clipped into [EPSILON, 1 − EPSILON].
- rce: 100·(1 − logloss / CE_baseline), CE_baseline = −[ȳ·log ȳ + (1 − ȳ)·log(1 − ȳ)], the log loss of always
  predicting the weighted mean label.
- nrce: rce of the predictions rescaled by ȳ / p̄ (p̄ = Σw·p / Σw) and clipped into [EPSILON, 1 − EPSILON], so it
  measures ranking and shape, not the overall calibration.
- pr_auc: weighted average precision Σ_k (R_k − R_{k−1})·P_k over the distinct scores k in decreasing order.
- calibration: Σw·p / Σw·y (1 is calibrated, above 1 over-predicts).
- group_auc (optional): mean of the per-group AUCs weighted by each group's Σw; groups holding a single class are
  skipped (group_auc_groups says how many counted).

A value that is undefined for the data (AUC of a single-class task, RCE with ȳ ∈ {0, 1}, anything on no rows) is
None (null in JSON) and a sentence in "notes" says why; no NaN or infinity is ever returned. core/metrics_block.py
completes each task's block, here and in the sharded evaluation alike.

metrics.json (schema_version 1), written once per dataset and evaluated step::

    {
      "schema_version": 1,
      "dataset": "test",                      # validation set name (null if not given)
      "step": 1200,                           # training step of the checkpoint (null if not given)
      "checkpoint": "runs/x/checkpoints/...", # checkpoint path (null if not given)
      "stratifiers": ["client_id"],           # stratifier columns, in order
      "tasks": {
        "<task>": {
          "auc": float|null, "rce": float|null, "nrce": float|null, "logloss": float|null,
          "pr_auc": float|null, "calibration": float|null, "pos_rate": float|null, "count": float,
          "rows": int, "notes": [str, ...],
          "group_auc": float|null, "group_auc_groups": int,     # only with group ids
          "oracle": {... the same keys, without "oracle" and "strata"},   # only with oracle probabilities
          "strata": {"<stratifier>": {"<value>": {... the same keys, without "strata"}}}  # only with stratifiers
        }
      }
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from core.metrics_block import baseline_entropy, finish_block, no_rows_block

__all__ = [
    "EPSILON",
    "METRIC_KEYS",
    "SCHEMA_VERSION",
    "auc",
    "average_precision",
    "binary_metrics",
    "calibration_ratio",
    "compute_metrics",
    "group_auc_table",
    "grouped_auc",
    "log_loss",
    "metrics_document",
    "nrce",
    "rce",
    "tie_blocks",
]

SCHEMA_VERSION = 1
# Predictions are clipped into [EPSILON, 1 - EPSILON] inside logarithms: about the float32 resolution near 1, where a
# sigmoid output rounds to exactly 1.0.
EPSILON = 1e-7
METRIC_KEYS = ("auc", "rce", "nrce", "logloss", "pr_auc", "calibration", "pos_rate", "count")


def _as_1d(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def tie_blocks(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in increasing order with the positive and negative weight summed over each tie block."""
    if scores.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    # Tied scores land in one block whatever their order, so an unstable (faster) sort is exact here.
    order = np.argsort(scores)
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return sorted_scores[starts], np.add.reduceat(pos[order], starts), np.add.reduceat(neg[order], starts)


def _auc_from_blocks(pos: np.ndarray, neg: np.ndarray) -> float | None:
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


def _ap_from_blocks(pos: np.ndarray, neg: np.ndarray) -> float | None:
    total_pos = pos.sum()
    if total_pos <= 0:
        return None
    pos_desc, neg_desc = pos[::-1], neg[::-1]
    true_pos = np.cumsum(pos_desc)
    predicted_pos = true_pos + np.cumsum(neg_desc)
    keep = predicted_pos > 0
    return float(np.sum(pos_desc[keep] * (true_pos[keep] / predicted_pos[keep])) / total_pos)


def _default_weights(labels: np.ndarray, weights: Any) -> np.ndarray:
    return np.ones_like(labels) if weights is None else _as_1d("weights", weights)


def auc(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """Weighted ROC AUC with ties counted ½; None when either class has no weight."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    _, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    return _auc_from_blocks(pos, neg)


def average_precision(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """Weighted average precision (PR-AUC), one threshold per distinct score; None without positives."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    _, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    return _ap_from_blocks(pos, neg)


def log_loss(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """Weighted binary cross-entropy with predictions clipped into [EPSILON, 1 - EPSILON]; None on no weight."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    total = w.sum()
    if total <= 0:
        return None
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    return float(-np.sum(w * (y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped))) / total)


def rce(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """Relative cross-entropy 100·(1 − CE/CE_baseline) against always predicting the weighted mean label."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    total = w.sum()
    baseline = baseline_entropy(float(np.sum(w * y) / total)) if total > 0 else None
    if baseline is None:
        return None
    return 100.0 * (1.0 - log_loss(p, y, w) / baseline)


def nrce(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """RCE of the predictions rescaled by mean label / mean prediction (then clipped into (0, 1))."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    total = w.sum()
    if total <= 0:
        return None
    mean_pred = float(np.sum(w * p) / total)
    if mean_pred <= 0:
        return None
    return rce(p * (float(np.sum(w * y) / total) / mean_pred), y, w)


def calibration_ratio(predictions: Any, labels: Any, weights: Any = None) -> float | None:
    """Σw·p / Σw·y; None without positives."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    positives = float(np.sum(w * y))
    return float(np.sum(w * p)) / positives if positives > 0 else None


def group_auc_table(
    predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray, group_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group, in increasing group id: (the id, its positive weight, its negative weight, its weight of
    positive-negative pairs ordered right, ties ½). A group's AUC is wins / (pos·neg). Arrays must be 1-D, non-empty
    and of one shape (grouped_auc checks); shared with the sharded evaluation, which sums groups over ranks."""
    p, y, w, groups = predictions, labels, weights, group_ids
    # By group, then score: a fast sort on scores, then a stable (radix) sort on the integer group ids.
    by_score = np.argsort(p)
    order = by_score[np.argsort(groups[by_score], kind="stable")]
    g, s = groups[order], p[order]
    pos, neg = (w * y)[order], (w * (1.0 - y))[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    block_starts = np.flatnonzero(new_group | np.r_[True, s[1:] != s[:-1]])
    block_pos = np.add.reduceat(pos, block_starts)
    block_neg = np.add.reduceat(neg, block_starts)
    starts_group = new_group[block_starts]
    block_group = np.cumsum(starts_group) - 1
    # Negatives scoring below a block, counted within its own group: an exclusive running sum restarted per group.
    exclusive = np.cumsum(block_neg) - block_neg
    neg_below = exclusive - exclusive[np.flatnonzero(starts_group)][block_group]
    num_groups = int(block_group[-1]) + 1
    pos_g = np.bincount(block_group, block_pos, num_groups)
    neg_g = np.bincount(block_group, block_neg, num_groups)
    wins_g = np.bincount(block_group, block_pos * (neg_below + 0.5 * block_neg), num_groups)
    return g[np.flatnonzero(new_group)], pos_g, neg_g, wins_g


def grouped_auc(predictions: Any, labels: Any, weights: Any, group_ids: Any) -> tuple[float | None, int]:
    """Mean of per-group AUCs weighted by group Σw, skipping single-class groups; returns (value, groups counted)."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    groups = np.asarray(group_ids)
    if groups.shape != p.shape:
        raise ValueError(f"group ids must have shape {p.shape}, got {groups.shape}")
    if p.size == 0:
        return None, 0
    _, pos_g, neg_g, wins_g = group_auc_table(p, y, w, groups)
    valid = (pos_g > 0) & (neg_g > 0)
    if not valid.any():
        return None, 0
    group_weight = (pos_g + neg_g)[valid]
    group_auc = wins_g[valid] / (pos_g[valid] * neg_g[valid])
    return float(np.sum(group_weight * group_auc) / group_weight.sum()), int(valid.sum())


def _clean(p: np.ndarray, y: np.ndarray, w: np.ndarray, notes: list[str], extra: Sequence[np.ndarray] = ()):
    """Validate ranges and drop rows with a non-finite value or zero weight (noting how many)."""
    finite = np.isfinite(p) & np.isfinite(y) & np.isfinite(w)
    bad = int(p.size - finite.sum())
    if bad:
        notes.append(f"{bad} row(s) with a non-finite prediction, label or weight were left out")
    pf, yf, wf = p[finite], y[finite], w[finite]
    if pf.size and (pf.min() < 0.0 or pf.max() > 1.0):
        raise ValueError(f"predictions must be probabilities in [0, 1], got values in [{pf.min()}, {pf.max()}]")
    if yf.size and (yf.min() < 0.0 or yf.max() > 1.0):
        raise ValueError(f"labels must be in [0, 1], got values in [{yf.min()}, {yf.max()}]")
    if wf.size and wf.min() < 0.0:
        raise ValueError(f"weights must be >= 0, got a minimum of {wf.min()}")
    keep = finite & (w > 0)
    return (p[keep], y[keep], w[keep], *(e[keep] for e in extra))


def binary_metrics(predictions: Any, labels: Any, weights: Any = None, group_ids: Any = None) -> dict:
    """Every metric of METRIC_KEYS (plus rows, notes, and group_auc with group ids) for one task, JSON-ready."""
    p, y = _as_1d("predictions", predictions), _as_1d("labels", labels)
    w = _default_weights(y, weights)
    if not p.shape == y.shape == w.shape:
        raise ValueError(f"predictions, labels and weights differ in shape: {p.shape}, {y.shape}, {w.shape}")
    notes: list[str] = []
    groups = None if group_ids is None else np.asarray(group_ids)
    if groups is not None:
        if groups.shape != p.shape:
            raise ValueError(f"group ids must have shape {p.shape}, got {groups.shape}")
        p, y, w, groups = _clean(p, y, w, notes, (groups,))
    else:
        p, y, w = _clean(p, y, w, notes)
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    total = float(w.sum())
    out["count"], out["rows"] = total, int(p.size)
    if p.size == 0:
        return no_rows_block(out, notes, grouped=groups is not None)
    positives = float(np.sum(w * y))
    mean_label = positives / total
    mean_pred = float(np.sum(w * p)) / total
    out["pos_rate"] = mean_label
    out["logloss"] = log_loss(p, y, w)
    out["calibration"] = calibration_ratio(p, y, w)
    _, pos, neg = tie_blocks(p, w * y, w * (1.0 - y))
    out["auc"] = _auc_from_blocks(pos, neg)
    out["pr_auc"] = _ap_from_blocks(pos, neg)
    # The rows left all have positive weight, so their log loss is never None.
    return finish_block(out, notes, positives, total, mean_pred,
                        lambda: cast(float, log_loss(p * (mean_label / mean_pred), y, w)),
                        None if groups is None else grouped_auc(p, y, w, groups))


def _value_key(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, np.integer)) else str(value)


def _task_block(p, y, w, groups, oracle) -> dict:
    block = binary_metrics(p, y, w, groups)
    if oracle is not None:
        block["oracle"] = binary_metrics(oracle, y, w, groups)
    return block


def compute_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    task_names: Sequence[str],
    stratifiers: np.ndarray | None = None,
    stratifier_names: Sequence[str] = (),
    group_ids: np.ndarray | None = None,
    oracle: np.ndarray | None = None,
) -> dict:
    """The "tasks" part of metrics.json from whole-dataset arrays: predictions/labels/weights/oracle [N, T]."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.ones_like(labels) if weights is None else np.asarray(weights, dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[1] != len(task_names):
        raise ValueError(f"predictions must have shape [N, {len(task_names)}] (one column per task {list(task_names)}), "
                         f"got {predictions.shape}")
    for name, array in (("labels", labels), ("weights", weights), ("oracle", oracle)):
        if array is not None and np.shape(array) != predictions.shape:
            raise ValueError(f"{name} must have the shape of predictions {predictions.shape}, got {np.shape(array)}")
    if oracle is not None:
        oracle = np.asarray(oracle, dtype=np.float64)
    if group_ids is not None:
        group_ids = np.asarray(group_ids)
        if group_ids.shape != (predictions.shape[0],):
            raise ValueError(f"group ids must have shape [{predictions.shape[0]}], got {group_ids.shape}")
    # Row indices of every stratum, computed once and shared by all tasks.
    strata_rows: dict[str, dict[str, np.ndarray]] = {}
    if stratifier_names:
        stratifiers = np.asarray(stratifiers) if stratifiers is not None else None
        if stratifiers is None or stratifiers.shape != (predictions.shape[0], len(stratifier_names)):
            got = None if stratifiers is None else stratifiers.shape
            raise ValueError(f"stratifiers must have shape [{predictions.shape[0]}, {len(stratifier_names)}] "
                             f"(columns {list(stratifier_names)}), got {got}")
        for s, name in enumerate(stratifier_names):
            values, inverse = np.unique(stratifiers[:, s], return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
            strata_rows[name] = {
                _value_key(v): order[bounds[i] : bounds[i + 1]] for i, v in enumerate(values.tolist())
            }
    tasks: dict[str, dict] = {}
    for t, task in enumerate(task_names):
        p, y, w = (np.ascontiguousarray(a[:, t]) for a in (predictions, labels, weights))
        o = None if oracle is None else np.ascontiguousarray(oracle[:, t])
        try:
            block = _task_block(p, y, w, group_ids, o)
            if strata_rows:
                block["strata"] = {
                    name: {
                        value: _task_block(
                            p[rows], y[rows], w[rows],
                            None if group_ids is None else group_ids[rows],
                            None if o is None else o[rows],
                        )
                        for value, rows in by_value.items()
                    }
                    for name, by_value in strata_rows.items()
                }
        except ValueError as exc:
            raise ValueError(f"task {task!r}: {exc}") from None
        tasks[task] = block
    return tasks


def metrics_document(
    tasks: dict,
    dataset: str | None = None,
    step: int | None = None,
    checkpoint: str | None = None,
    stratifier_names: Sequence[str] = (),
) -> dict:
    """Wrap per-task metrics into the metrics.json document (see the module docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "step": step,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "stratifiers": list(stratifier_names),
        "tasks": tasks,
    }
