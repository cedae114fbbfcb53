"""Per-request ranking metrics and gate statistics of expert mixtures, exact and order-independent.

A request is the group of impressions shown together (one user, one time); the ranker is judged on the order it
puts each request's candidates in.

- NDCG@k of one request: sort its impressions by score, descending; DCG@k = Σ_{i=1..k} gain_i / log2(i + 1);
  IDCG@k is the DCG@k of the order by gain; NDCG@k = DCG@k / IDCG@k. Requests with IDCG@k = 0 (no positive gain) are
  skipped; the result is the mean over the requests used and their count. Tied scores are ordered neither way: each
  impression of a tie block gets the mean discount of the positions the block occupies (the expected DCG over the
  block's orders), so the value never depends on the order rows arrive in.
- The ranking score is score = Σ_t w_t · p_t; an impression's realised value is v = Σ_t w_t · y_t, its gain max(v, 0).
  Each task alone ranks by its own probability p_t against gain y_t.
- Request AUC of a task: the AUC within each request holding both classes, averaged with the requests' weighted
  impression counts (core.metrics.grouped_auc).
- Gate statistics of a mixture gate with K experts, from its per-row weights g_i (each a distribution over experts):
  mean_weights = mean_i g_i; entropy_of_mean = H(mean_weights); mean_entropy = mean_i H(g_i), H(q) = −Σ_k q_k log q_k
  in nats, at most log K. A gate that sends every row to one expert (collapse) has entropy_of_mean near 0; a gate
  whose rows each pick one expert, but different ones, has mean_entropy near 0 and entropy_of_mean well above it.

The "ranking" block of metrics.json (only when the evaluation has request ids)::

    "ranking": {
      "request_column": "request_id", "requests": int, "k": [5, 10],
      "score": {"ndcg@5": float|null, "requests@5": int, ...} | null,        # null without scoring weights
      "tasks": {"<task>": {"ndcg@5": ..., "requests@5": ..., "request_auc": float|null, "request_auc_requests": int}}
    }
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.metrics import grouped_auc

__all__ = ["gate_statistics", "ndcg_at_k", "ndcg_sums", "ranking_block"]


def _request_index(request_ids: np.ndarray) -> np.ndarray:
    """Dense request numbers 0..R-1 of each row."""
    return np.unique(np.asarray(request_ids), return_inverse=True)[1].reshape(-1)


def ndcg_at_k(
    scores: np.ndarray, gains: np.ndarray, request_ids: np.ndarray, ks: Sequence[int]
) -> dict[int, tuple[float | None, int]]:
    """{k: (mean NDCG@k over the requests with IDCG@k > 0, their count)}; (None, 0) when no request counts."""
    return {k: (total / count if count else None, count) for k, (total, count) in ndcg_sums(scores, gains,
                                                                                            request_ids, ks).items()}


def ndcg_sums(
    scores: np.ndarray, gains: np.ndarray, request_ids: np.ndarray, ks: Sequence[int]
) -> dict[int, tuple[float, int]]:
    """{k: (sum of NDCG@k over the requests with IDCG@k > 0, their count)}: sums over disjoint sets of whole
    requests add up, which the sharded evaluation uses."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    gains = np.asarray(gains, dtype=np.float64).reshape(-1)
    if scores.shape != gains.shape or np.shape(request_ids)[0] != scores.shape[0]:
        raise ValueError(f"scores {scores.shape}, gains {gains.shape} and request ids {np.shape(request_ids)} must "
                         "have one entry per row")
    if np.any(gains < 0) or not np.all(np.isfinite(gains)) or not np.all(np.isfinite(scores)):
        raise ValueError("gains must be finite and non-negative, scores finite")
    out: dict[int, tuple[float, int]] = {}
    if scores.size == 0:
        for k in ks:
            if int(k) < 1:
                raise ValueError(f"NDCG cut-off k must be at least 1, got {int(k)}")
        return {int(k): (0.0, 0) for k in ks}
    request = _request_index(request_ids)
    num_requests = int(request.max()) + 1
    # By request, then score descending (lexsort: the last key is the primary one).
    order = np.lexsort((-scores, request))
    r, s, g = request[order], scores[order], gains[order]
    request_start = np.r_[True, r[1:] != r[:-1]]
    first_row = np.flatnonzero(request_start)
    position = np.arange(r.size) - first_row[np.cumsum(request_start) - 1]
    block_starts = np.flatnonzero(request_start | np.r_[True, s[1:] != s[:-1]])
    block_sizes = np.diff(np.r_[block_starts, r.size])
    block_of_row = np.repeat(np.arange(block_starts.size), block_sizes)
    # Ideal order: by request, then gain descending.
    ideal = np.lexsort((-gains, request))
    ideal_gain = gains[ideal]
    for k in ks:
        k = int(k)
        if k < 1:
            raise ValueError(f"NDCG cut-off k must be at least 1, got {k}")
        discount = np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)
        block_discount = np.add.reduceat(discount, block_starts) / block_sizes
        dcg = np.bincount(r, g * block_discount[block_of_row], num_requests)
        idcg = np.bincount(r, ideal_gain * discount, num_requests)  # the ideal order has the same positions
        used = idcg > 0
        count = int(used.sum())
        out[k] = (float(np.sum(dcg[used] / idcg[used])), count)
    return out


def _ndcg_fields(values: dict[int, tuple[float | None, int]]) -> dict:
    fields: dict = {}
    for k, (value, count) in values.items():
        fields[f"ndcg@{k}"] = value
        fields[f"requests@{k}"] = count
    return fields


def ranking_block(
    predictions: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    request_ids: np.ndarray,
    task_names: Sequence[str],
    ks: Sequence[int] = (5, 10),
    score_weights: Sequence[float] | None = None,
    request_column: str | None = None,
) -> dict:
    """The "ranking" block of metrics.json from whole-dataset arrays [N, T] (see the module docstring). Rows whose
    weights are all zero (padding) or that hold a non-finite value are left out."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    request_ids = np.asarray(request_ids).reshape(-1)
    if predictions.ndim != 2 or predictions.shape[1] != len(task_names):
        raise ValueError(f"predictions must have shape [N, {len(task_names)}], got {predictions.shape}")
    if request_ids.shape[0] != predictions.shape[0]:
        raise ValueError(f"request ids must have shape [{predictions.shape[0]}], got {request_ids.shape}")
    if score_weights is not None and len(score_weights) != len(task_names):
        raise ValueError(f"{len(task_names)} tasks but {len(score_weights)} scoring weights")
    keep = (weights > 0).any(axis=1)
    keep &= np.isfinite(predictions).all(axis=1) & np.isfinite(labels).all(axis=1)
    p, y, w, ids = predictions[keep], labels[keep], weights[keep], request_ids[keep]
    block: dict = {
        "request_column": request_column,
        "requests": int(np.unique(ids).size),
        "k": [int(k) for k in ks],
        "score": None,
        "tasks": {},
    }
    if score_weights is not None:
        sw = np.asarray(score_weights, dtype=np.float64)
        block["score"] = _ndcg_fields(ndcg_at_k(p @ sw, np.maximum(y @ sw, 0.0), ids, ks))
    for t, task in enumerate(task_names):
        fields = _ndcg_fields(ndcg_at_k(p[:, t], np.clip(y[:, t], 0.0, None), ids, ks))
        fields["request_auc"], fields["request_auc_requests"] = grouped_auc(p[:, t], y[:, t], w[:, t], ids)
        block["tasks"][task] = fields
    return block


def gate_statistics(weight_sum: np.ndarray, entropy_sum: float, rows: int) -> dict:
    """Statistics of one gate from the sums over its rows of the weights [K] and of each row's entropy."""
    weight_sum = np.asarray(weight_sum, dtype=np.float64).reshape(-1)
    num_experts = weight_sum.size
    if rows <= 0:
        return {"rows": 0, "mean_weights": None, "entropy_of_mean": None, "mean_entropy": None,
                "max_entropy": math.log(num_experts)}
    mean = weight_sum / rows
    positive = mean[mean > 0]
    return {
        "rows": int(rows),
        "mean_weights": [float(v) for v in mean],
        "entropy_of_mean": float(-(positive * np.log(positive)).sum()),
        "mean_entropy": float(entropy_sum / rows),
        "max_entropy": math.log(num_experts),
    }
