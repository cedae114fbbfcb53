"""Exact evaluation metrics with every row left on the rank that scored it: memory per rank O(rows / ranks).

The values are those of the gather path (core.metrics, core.metrics_curves and core.ranking_metrics on every row at
once) up to the order of floating-point sums. Every rank calls every function here with its own rows, in the same
order (they are collectives); every rank gets the whole result.

- Sums (count, rows, Σw·y, Σw·p, log losses) are per-rank partial sums added by one all_reduce; nrce takes a second
  one, once every rank knows the mean label and the mean prediction.
- AUC, PR-AUC and the ROC, precision-recall and reliability curves need the rows in score order. Each row becomes an
  int64 sort key (segment << 32 | the bits of its float32 score: the bits of a non-negative float increase with its
  value, and each segment is one stratum); each rank merges its equal keys into tie blocks (positive and negative
  weight summed); splitters taken from a weighted sample of every rank's keys cut the key range into one contiguous
  range per rank; an all_to_all sends each block to the rank that owns its key, which merges what it receives.
  Equal keys land on one rank, so no tie is cut by a rank boundary. A block's AUC term needs the negative weight
  below it within its segment, its PR-AUC term the weight above it: a running sum on the rank plus a carry from the
  ranks below (above), read from each rank's small summary (one all_gather).
- Segment 0 is every row of the task, then one segment per value of each stratifier: one sort serves every stratum.
- Grouped AUC and the per-request ranking metrics need each group (request) whole: rows move to the rank
  hash(id) mod ranks (an all_to_all), each rank computes its own groups, and the partial sums are added.
- Curves are thinned as core.metrics_curves.downsample_curve does: each rank measures its stretch of the curve, the
  stretches' lengths are added in curve order, and each rank picks the points where the running length first reaches
  each target; only the picked points (at most num_points) travel.

The only per-row data that ever leaves a rank is the rank's share of tie blocks (sort) and of rows (groups, requests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from core.metrics import EPSILON, METRIC_KEYS, _baseline_entropy, _finite, _value_key, group_auc_table
from core.metrics_curves import HISTOGRAM_BINS, RELIABILITY_BINS
from core.ranking_metrics import ndcg_sums

__all__ = [
    "Collective",
    "collective_device",
    "segment_scans",
    "sharded_curves",
    "sharded_metrics",
    "sharded_ranking_block",
    "sort_blocks",
]

# Keys sampled from each rank to choose the splitters: enough that a rank's share is within a few percent of even.
SAMPLES_PER_RANK = 1024
_SCORE_MASK = np.int64(0xFFFFFFFF)


def collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where collectives on `group` take their tensors."""
    # NCCL only moves CUDA tensors; gloo (alone or beside NCCL) takes CPU tensors.
    backend = str(dist.get_backend(group)).lower()
    if "gloo" not in backend and "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Collective:
    """The few collectives the sharded metrics use, on numpy arrays; without a process group of more than one rank
    each is the identity (one rank holds every row)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
        self.world = dist.get_world_size(group) if self.active else 1
        self.rank = dist.get_rank(group) if self.active else 0
        self.device = collective_device(group) if self.active else torch.device("cpu")

    def _reduce(self, array: Any, op: Any) -> np.ndarray:
        array = np.ascontiguousarray(array, dtype=np.float64)
        if not self.active:
            return array
        tensor = torch.from_numpy(array.copy()).to(self.device)
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.cpu().numpy()

    def sum(self, array: Any) -> np.ndarray:
        """Element-wise sum over ranks (float64)."""
        return self._reduce(array, dist.ReduceOp.SUM)

    def max(self, array: Any) -> np.ndarray:
        """Element-wise maximum over ranks (float64)."""
        return self._reduce(array, dist.ReduceOp.MAX)

    def gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (any length along the first axis, same trailing shape and dtype), in rank order.
        For small arrays only: every rank receives all of them."""
        array = np.ascontiguousarray(array)
        if not self.active:
            return [array]
        length = torch.tensor([array.shape[0]], dtype=torch.int64, device=self.device)
        lengths = [torch.empty_like(length) for _ in range(self.world)]
        dist.all_gather(lengths, length, group=self.group)
        counts = [int(n.item()) for n in lengths]
        padded = np.zeros((max(max(counts), 1), *array.shape[1:]), dtype=array.dtype)
        padded[: array.shape[0]] = array
        mine = torch.from_numpy(padded).to(self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        return [part[:n].cpu().numpy() for part, n in zip(parts, counts)]

    def exchange(self, destination: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Send row i of every array to rank destination[i] (all_to_all); returns the rows this rank received, rank
        by rank in the senders' order."""
        if not self.active:
            return [np.asarray(a) for a in arrays]
        order = np.argsort(destination, kind="stable")
        send = np.bincount(destination, minlength=self.world).astype(np.int64)
        received = torch.empty(self.world, dtype=torch.int64, device=self.device)
        dist.all_to_all_single(received, torch.from_numpy(send).to(self.device), group=self.group)
        receive = received.cpu().tolist()
        out = []
        for array in arrays:
            source = torch.from_numpy(np.ascontiguousarray(array[order])).to(self.device)
            target = torch.empty((sum(receive), *array.shape[1:]), dtype=source.dtype, device=self.device)
            dist.all_to_all_single(target, source, receive, send.tolist(), group=self.group)
            out.append(target.cpu().numpy())
            del source, target
        return out


# --- the distributed sort --------------------------------------------------------------------------------------------
def score_keys(scores: np.ndarray, segments: np.ndarray | int = 0) -> np.ndarray:
    """int64 sort keys (segment, score) of float32 scores in [0, 1]: a non-negative float's bits grow with it."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32).astype(np.int64)  # -0.0 -> 0.0
    return (np.asarray(segments, dtype=np.int64) << 32) | bits


def key_scores(keys: np.ndarray) -> np.ndarray:
    """The float64 scores of score_keys' keys."""
    return (keys & _SCORE_MASK).astype(np.uint32).view(np.float32).astype(np.float64)


def _merge(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys, increasing, with values [n, k] summed over each key."""
    if keys.size == 0:
        return keys.astype(np.int64), values.reshape(0, values.shape[1])
    order = np.argsort(keys)
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], np.add.reduceat(values[order], starts, axis=0)


def _splitters(comm: Collective, sorted_keys: np.ndarray) -> np.ndarray:
    """world − 1 non-decreasing keys cutting the union of every rank's keys into parts of about equal size."""
    n = sorted_keys.size
    m = min(n, SAMPLES_PER_RANK)
    picks = sorted_keys[((np.arange(m) + 0.5) * n / m).astype(np.int64)] if m else np.zeros(0, dtype=np.int64)
    parts = comm.gather(picks)
    sizes = comm.gather(np.array([n], dtype=np.int64))
    keys = np.concatenate(parts)
    if keys.size == 0:
        return np.zeros(comm.world - 1, dtype=np.int64)
    # Each sample stands for n / m keys of its rank.
    weight = np.concatenate([np.full(p.size, s[0] / max(p.size, 1)) for p, s in zip(parts, sizes)])
    order = np.argsort(keys, kind="stable")
    keys, cumulative = keys[order], np.cumsum(weight[order])
    targets = cumulative[-1] * np.arange(1, comm.world) / comm.world
    return keys[np.minimum(np.searchsorted(cumulative, targets), keys.size - 1)]


def sort_blocks(comm: Collective, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys of every rank's rows with their values [n, k] summed, sorted and spread over the ranks:
    rank r holds a contiguous key range, below rank r + 1's, and each key is on exactly one rank."""
    keys, values = _merge(keys, values)
    if not comm.active:
        return keys, values
    destination = np.searchsorted(_splitters(comm, keys), keys, side="right")
    keys, values = comm.exchange(destination, [keys, values])
    return _merge(keys, values)


def segment_scans(comm: Collective, segments: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For blocks sorted by key (segments non-decreasing, in rank order across ranks): (the sum of values over the
    blocks below each block in its segment, exclusive; the sum over the blocks at and above it, inclusive), each
    over every rank."""
    n, k = values.shape
    below = np.empty_like(values)
    from_top = np.empty_like(values)
    bounds = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1], True]) if n else np.zeros(1, dtype=np.int64)
    first_sum, last_sum = np.zeros(k), np.zeros(k)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = values[a:b]
        running = np.cumsum(part, axis=0)
        below[a:b] = running - part
        from_top[a:b] = np.cumsum(part[::-1], axis=0)[::-1]
        if i == 0:
            first_sum = running[-1]
        last_sum = running[-1]
    if not comm.active:
        return below, from_top
    summary = np.r_[float(n > 0), segments[0] if n else -1, segments[-1] if n else -1, first_sum, last_sum]
    ranks = comm.gather(summary[None, :])
    if n == 0:
        return below, from_top
    first, last = segments[0], segments[-1]
    carry_below, carry_above = np.zeros(k), np.zeros(k)
    for q in range(comm.rank - 1, -1, -1):
        s = ranks[q][0]
        if not s[0]:
            continue
        if s[2] != first:
            break
        carry_below += s[3 + k :]
        if s[1] != first:
            break
    for q in range(comm.rank + 1, comm.world):
        s = ranks[q][0]
        if not s[0]:
            continue
        if s[1] != last:
            break
        carry_above += s[3 : 3 + k]
        if s[2] != last:
            break
    below[segments == first] += carry_below
    from_top[segments == last] += carry_above
    return below, from_top


# --- the metrics.json "tasks" part -----------------------------------------------------------------------------------
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
        notes.append("no rows with positive weight: every metric is undefined")
        if group is not None:
            out["group_auc"], out["group_auc_groups"] = None, 0
        out["notes"] = notes
        return out
    mean_label = positives / total
    out["pos_rate"] = mean_label
    out["logloss"] = loss / total
    out["calibration"] = weighted_p / positives if positives > 0 else None
    out["auc"] = auc_terms / (block_pos * block_neg) if block_pos > 0 and block_neg > 0 else None
    out["pr_auc"] = ap_terms / block_pos if block_pos > 0 else None
    baseline = _baseline_entropy(mean_label)
    if baseline is not None:
        out["rce"] = 100.0 * (1.0 - out["logloss"] / baseline)
        if weighted_p / total > 0:
            out["nrce"] = 100.0 * (1.0 - (normalized_loss / total) / baseline)
        else:
            notes.append("every prediction is 0: nrce is undefined")
    if positives <= 0:
        notes.append("no positive labels: auc, rce, nrce, pr_auc and calibration are undefined")
    elif positives >= total:
        notes.append("no negative labels: auc, rce and nrce are undefined")
    if group is not None:
        out["group_auc"], out["group_auc_groups"] = group
        if out["group_auc"] is None:
            notes.append("no group holds both classes: group_auc is undefined")
    out["notes"] = notes
    return _finite(out)


def _owner(ids: np.ndarray, world: int) -> np.ndarray:
    """The rank of each id: a 64-bit mix (splitmix64's finalizer) of the id, modulo the ranks."""
    x = np.asarray(ids, dtype=np.int64).view(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(world)).astype(np.int64)


def _by_owner(comm: Collective, ids: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every rank's rows of `arrays` moved to the rank owning their id (ids first in the result)."""
    return comm.exchange(_owner(ids, comm.world), [ids, *arrays])


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
        grouped = _by_owner(comm, np.asarray(group_ids, dtype=np.int64), [*floats, passes])
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


# --- the "ranking" block ---------------------------------------------------------------------------------------------
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
    ids, p, y, w = _by_owner(comm, np.asarray(request_ids, dtype=np.int64).reshape(-1),
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


# --- curves.json -----------------------------------------------------------------------------------------------------
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
