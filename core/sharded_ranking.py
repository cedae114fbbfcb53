"""The "ranking" block of metrics.json (core.ranking_metrics.ranking_block) over every rank's rows without gathering
them: each request's rows move whole to one rank (core/sharded_sort.py by_owner), each rank computes NDCG@k and the
per-request AUC of its own requests, and the partial sums are added (one all_reduce). Collective.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.collective import Collective
from core.metrics import group_auc_table
from core.ranking_metrics import ndcg_sums
from core.sharded_sort import by_owner

__all__ = ["sharded_ranking_block"]


def sharded_ranking_block(
    comm: Collective,
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    request_ids: np.ndarray,
    task_names: Sequence[str],
    ks: Sequence[int] = (5, 10),
    score_weights: Sequence[float] | None = None,
    request_column: str | None = None,
) -> dict:
    """core.ranking_metrics.ranking_block over every rank's rows: each request's rows first move to one rank.
    Collective."""
    if score_weights is not None and len(score_weights) != len(task_names):
        raise ValueError(f"{len(task_names)} tasks but {len(score_weights)} scoring weights")
    ids, p, y, w = by_owner(comm, np.asarray(request_ids, dtype=np.int64).reshape(-1),
                             [predictions, labels, weights])
    p, y, w = p.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    keep = (w > 0).any(axis=1) & np.isfinite(p).all(axis=1) & np.isfinite(y).all(axis=1)
    p, y, w, ids = p[keep], y[keep], w[keep], ids[keep]
    ks = [int(k) for k in ks]
    parts = []  # per scorer: [Σ ndcg@k, count@k for each k], then per task request AUC sums
    if score_weights is not None:
        sw = np.asarray(score_weights, dtype=np.float64)
        parts.append(ndcg_sums(p @ sw, np.maximum(y @ sw, 0.0), ids, ks))
    for t in range(len(task_names)):
        parts.append(ndcg_sums(p[:, t], np.clip(y[:, t], 0.0, None), ids, ks))
    auc_sums = np.zeros((len(task_names), 3))
    if ids.size:
        for t in range(len(task_names)):
            _, pos_g, neg_g, wins_g = group_auc_table(p[:, t], y[:, t], w[:, t], ids)
            valid = (pos_g > 0) & (neg_g > 0)
            weight = (pos_g + neg_g)[valid]
            auc_sums[t] = [np.sum(weight * (wins_g[valid] / (pos_g[valid] * neg_g[valid]))), weight.sum(),
                           valid.sum()]
    flat = np.r_[float(np.unique(ids).size), [v for part in parts for k in ks for v in part[k]], auc_sums.ravel()]
    flat = comm.sum(flat)
    requests, flat = int(round(flat[0])), flat[1:]
    ndcg_flat, auc_flat = flat[: 2 * len(ks) * len(parts)], flat[2 * len(ks) * len(parts):].reshape(-1, 3)

    def fields(index: int) -> dict:
        out: dict = {}
        for i, k in enumerate(ks):
            total, count = ndcg_flat[2 * (index * len(ks) + i)], int(round(ndcg_flat[2 * (index * len(ks) + i) + 1]))
            out[f"ndcg@{k}"] = total / count if count else None
            out[f"requests@{k}"] = count
        return out

    block: dict = {"request_column": request_column, "requests": requests, "k": ks, "score": None, "tasks": {}}
    offset = 0
    if score_weights is not None:
        block["score"] = fields(0)
        offset = 1
    for t, task in enumerate(task_names):
        entry = fields(offset + t)
        weighted, weight, count = auc_flat[t]
        entry["request_auc"] = float(weighted / weight) if count > 0 else None
        entry["request_auc_requests"] = int(round(count))
        block["tasks"][task] = entry
    return block
