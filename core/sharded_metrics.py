"""Exact evaluation metrics with every row left on the rank that scored it: memory per rank O(rows / ranks).

The values are those of the gather path (core.metrics, core.metrics_curves and core.ranking_metrics on every row at
once) up to the order of floating-point sums. Every rank calls every function here with its own rows, in the same
order (they are collectives); every rank gets the whole result.

- Sums (count, rows, Σw·y, Σw·p, log losses) are per-rank partial sums added by one all_reduce; nrce takes a second
  one, once every rank knows the mean label and the mean prediction.
- AUC and PR-AUC come from the tie blocks of (segment, score) sorted across the ranks (core/sharded_sort.py), with
  the weight below (above) each block in its segment.
- Segment 0 is every row of the task, then one segment per value of each stratifier: one sort serves every stratum.
- Grouped AUC needs each group whole: its rows move to one rank (core/sharded_sort.py by_owner), each rank computes
  its own groups, and the partial sums are added.

The "ranking" block and curves.json are computed the same way by core/sharded_ranking.py and core/sharded_curves.py.
The only per-row data that ever leaves a rank is the rank's share of tie blocks (sort) and of rows (groups, requests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.collective import Collective
from core.metrics import EPSILON, METRIC_KEYS, _value_key, group_auc_table
from core.metrics_block import finish_block, no_rows_block
from core.sharded_sort import by_owner, score_keys, segment_scans, sort_blocks

__all__ = ["sharded_metrics"]


def _segments(comm: Collective, stratifiers: np.ndarray | None, names: Sequence[str]) -> tuple[np.ndarray, list, int]:
    """Each row's segment per pass [rows, 1 + S] (pass 0: segment 0, every row; pass s: one segment per value of
    stratifier s, numbered after those of the stratifiers before it), the layout [(name, [value keys], first
    segment)] and the number of segments. The values are those of every rank."""
    rows = 0 if stratifiers is None else stratifiers.shape[0]
    columns = [np.zeros(rows, dtype=np.int64)]
    layout = []
    offset = 1
    for s, name in enumerate(names):
        assert stratifiers is not None  # names come with their values
        values = np.unique(np.concatenate(comm.gather(np.unique(stratifiers[:, s]))))
        columns.append(offset + np.searchsorted(values, stratifiers[:, s]).astype(np.int64))
        layout.append((name, [_value_key(v) for v in values.tolist()], offset))
        offset += values.size
    return np.stack(columns, axis=1), layout, offset


def _check_ranges(comm: Collective, p: np.ndarray, y: np.ndarray, w: np.ndarray, finite: np.ndarray) -> None:
    """core.metrics' range checks on the finite rows of every rank, raised alike on every rank."""
    def extremes(a: np.ndarray) -> list[float]:
        a = a[finite]
        return [-a.min(), a.max()] if a.size else [-np.inf, -np.inf]

    found = comm.max(extremes(p) + extremes(y) + extremes(w)[:1])
    p_min, p_max, y_min, y_max, w_min = -found[0], found[1], -found[2], found[3], -found[4]
    if np.isfinite(p_max) and (p_min < 0.0 or p_max > 1.0):
        raise ValueError(f"predictions must be probabilities in [0, 1], got values in [{p_min}, {p_max}]")
    if np.isfinite(y_max) and (y_min < 0.0 or y_max > 1.0):
        raise ValueError(f"labels must be in [0, 1], got values in [{y_min}, {y_max}]")
    if np.isfinite(w_min) and w_min < 0.0:
        raise ValueError(f"weights must be >= 0, got a minimum of {w_min}")


def _weighted_log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    return -(w * (y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)))


def _per_segment(passes: np.ndarray, values: np.ndarray, num_segments: int) -> np.ndarray:
    """Σ values over the rows of each segment, every pass (each row is in one segment per pass)."""
    total = np.zeros(num_segments, dtype=np.float64)
    for j in range(passes.shape[1]):
        total += np.bincount(passes[:, j], values, num_segments)
    return total


def _sorted_terms(comm: Collective, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, passes: np.ndarray,
                  num_segments: int) -> np.ndarray:
    """Per segment, over every rank: [Σ AUC terms pos·(neg below + ½·neg), Σ PR-AUC terms pos·precision, positive
    weight, negative weight] [4, segments], from the tie blocks of (segment, score)."""
    keys = np.concatenate([score_keys(scores, passes[:, j]) for j in range(passes.shape[1])])
    values = np.tile(np.stack([pos, neg], axis=1), (passes.shape[1], 1))
    keys, values = sort_blocks(comm, keys, values)
    segment = keys >> 32
    below, from_top = segment_scans(comm, segment, values)
    block_pos, block_neg = values[:, 0], values[:, 1]
    true_pos = from_top[:, 0]
    predicted_pos = true_pos + from_top[:, 1]
    precision = np.divide(true_pos, predicted_pos, out=np.zeros_like(true_pos), where=predicted_pos > 0)
    terms = [block_pos * (below[:, 1] + 0.5 * block_neg), block_pos * precision, block_pos, block_neg]
    return comm.sum(np.stack([np.bincount(segment, t, num_segments) for t in terms]))


def _column_blocks(comm: Collective, p32: np.ndarray, y: np.ndarray, w: np.ndarray, passes: np.ndarray,
                   num_segments: int, groups: list | None) -> list[dict]:
    """core.metrics.binary_metrics of one prediction column for every segment (groups: each segment's
    (group_auc, groups counted), or None without group ids)."""
    p = p32.astype(np.float64)
    finite = np.isfinite(p) & np.isfinite(y) & np.isfinite(w)
    _check_ranges(comm, p, y, w, finite)
    keep = finite & (w > 0)
    kp32, kp, ky, kw, kpasses = p32[keep], p[keep], y[keep], w[keep], passes[keep]
    wy = kw * ky
    sums = comm.sum(np.stack([
        _per_segment(passes[~finite], np.ones(int((~finite).sum())), num_segments),
        _per_segment(kpasses, kw, num_segments),
        _per_segment(kpasses, np.ones(kw.size), num_segments),
        _per_segment(kpasses, wy, num_segments),
        _per_segment(kpasses, kw * kp, num_segments),
        _per_segment(kpasses, _weighted_log_loss(kp, ky, kw), num_segments),
    ]))
    bad, total, rows, positives, weighted_p, loss = sums
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where((total > 0) & (weighted_p > 0), (positives / total) / (weighted_p / total), 1.0)
    normalized_loss = comm.sum(sum(
        np.bincount(kpasses[:, j], _weighted_log_loss(kp * factor[kpasses[:, j]], ky, kw), num_segments)
        for j in range(kpasses.shape[1])
    ))
    auc_terms, ap_terms, block_pos, block_neg = _sorted_terms(comm, kp32, wy, kw * (1.0 - ky), kpasses, num_segments)
    return [
        _block(int(bad[s]), float(total[s]), int(round(rows[s])), float(positives[s]), float(weighted_p[s]),
               float(loss[s]), float(normalized_loss[s]), float(auc_terms[s]), float(ap_terms[s]),
               float(block_pos[s]), float(block_neg[s]), None if groups is None else groups[s])
        for s in range(num_segments)
    ]


def _block(bad: int, total: float, rows: int, positives: float, weighted_p: float, loss: float,
           normalized_loss: float, auc_terms: float, ap_terms: float, block_pos: float, block_neg: float,
           group: tuple[float | None, int] | None) -> dict:
    """One binary_metrics block from a segment's sums (the same values, notes and order as core.metrics)."""
    notes: list[str] = []
    if bad:
        notes.append(f"{bad} row(s) with a non-finite prediction, label or weight were left out")
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out["count"], out["rows"] = total, rows
    if rows == 0:
        return no_rows_block(out, notes, grouped=group is not None)
    out["pos_rate"] = positives / total
    out["logloss"] = loss / total
    out["calibration"] = weighted_p / positives if positives > 0 else None
    out["auc"] = auc_terms / (block_pos * block_neg) if block_pos > 0 and block_neg > 0 else None
    out["pr_auc"] = ap_terms / block_pos if block_pos > 0 else None
    return finish_block(out, notes, positives, total, weighted_p / total, lambda: normalized_loss / total, group)


def _group_aucs(comm: Collective, p: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray,
                passes: np.ndarray, num_segments: int) -> list[tuple[float | None, int]]:
    """(group_auc, groups counted) of every segment, from rows already placed so that each group is on one rank."""
    finite = np.isfinite(p) & np.isfinite(y) & np.isfinite(w)
    keep = finite & (w > 0)
    p, y, w, groups, passes = p[keep], y[keep], w[keep], groups[keep], passes[keep]
    sums = np.zeros((3, num_segments))
    if p.size:
        dense = np.unique(groups, return_inverse=True)[1].reshape(-1).astype(np.int64)
        num_groups = int(dense.max()) + 1
        for j in range(passes.shape[1]):
            ids, pos_g, neg_g, wins_g = group_auc_table(p, y, w, passes[:, j] * num_groups + dense)
            valid = (pos_g > 0) & (neg_g > 0)
            segment = ids[valid] // num_groups
            weight = (pos_g + neg_g)[valid]
            auc = wins_g[valid] / (pos_g[valid] * neg_g[valid])
            sums += np.stack([np.bincount(segment, weight * auc, num_segments),
                              np.bincount(segment, weight, num_segments),
                              np.bincount(segment, minlength=num_segments).astype(np.float64)])
    weighted, weight, count = comm.sum(sums)
    return [(float(weighted[s] / weight[s]), int(round(count[s]))) if count[s] > 0 else (None, 0)
            for s in range(num_segments)]


def sharded_metrics(
    comm: Collective,
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    task_names: Sequence[str],
    stratifiers: np.ndarray | None = None,
    stratifier_names: Sequence[str] = (),
    group_ids: np.ndarray | None = None,
    oracle: np.ndarray | None = None,
) -> dict:
    """core.metrics.compute_metrics over the rows of every rank, each passing its own float32 arrays [n, T]
    (predictions, oracle; labels, weights any float) and stratifiers [n, S], group ids [n]. Collective."""
    if predictions.ndim != 2 or predictions.shape[1] != len(task_names):
        raise ValueError(f"predictions must have shape [N, {len(task_names)}] (one column per task {list(task_names)}), "
                         f"got {predictions.shape}")
    for name, array in (("predictions", predictions), ("oracle", oracle)):
        if array is not None and array.dtype != np.float32:
            raise ValueError(f"sharded metrics sort by float32 scores: {name} are {array.dtype}")
    labels, weights = np.asarray(labels, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    rows = predictions.shape[0]
    if stratifier_names and (stratifiers is None or stratifiers.shape != (rows, len(stratifier_names))):
        got = None if stratifiers is None else stratifiers.shape
        raise ValueError(f"stratifiers must have shape [{rows}, {len(stratifier_names)}] "
                         f"(columns {list(stratifier_names)}), got {got}")
    strata = stratifiers if stratifier_names else np.zeros((rows, 0), dtype=np.int64)
    passes, layout, num_segments = _segments(comm, strata, stratifier_names)
    grouped = None
    if group_ids is not None:
        floats = [predictions, labels, weights] + ([] if oracle is None else [oracle])
        grouped = by_owner(comm, np.asarray(group_ids, dtype=np.int64), [*floats, passes])
    tasks: dict[str, dict] = {}
    for t, task in enumerate(task_names):
        y, w = np.ascontiguousarray(labels[:, t]), np.ascontiguousarray(weights[:, t])
        columns = [("", predictions)] + ([] if oracle is None else [("oracle", oracle)])
        try:
            per_column = {}
            for c, (kind, scores) in enumerate(columns):
                groups = None
                if grouped is not None:
                    g_ids, g_passes = grouped[0], grouped[-1]
                    g_scores, g_y, g_w = grouped[1 if c == 0 else 4], grouped[2], grouped[3]
                    groups = _group_aucs(comm, g_scores[:, t].astype(np.float64), g_y[:, t].astype(np.float64),
                                         g_w[:, t].astype(np.float64), g_ids, g_passes, num_segments)
                per_column[kind] = _column_blocks(comm, np.ascontiguousarray(scores[:, t]), y, w, passes,
                                                  num_segments, groups)
        except ValueError as exc:
            raise ValueError(f"task {task!r}: {exc}") from None
        blocks = per_column[""]
        if "oracle" in per_column:
            for block, oracle_block in zip(blocks, per_column["oracle"]):
                block["oracle"] = oracle_block
        block = blocks[0]
        if stratifier_names:
            block["strata"] = {name: {value: blocks[offset + i] for i, value in enumerate(values)}
                               for name, values, offset in layout}
        tasks[task] = block
    return tasks
