"""Rows placed where the sharded evaluation needs them: sorted by score across ranks, or grouped by an id on one rank.

- AUC, PR-AUC and the ROC, precision-recall and reliability curves need the rows in score order. Each row becomes an
  int64 sort key (segment << 32 | the bits of its float32 score: the bits of a non-negative float increase with its
  value, and each segment is one stratum); each rank merges its equal keys into tie blocks (positive and negative
  weight summed); splitters taken from a weighted sample of every rank's keys cut the key range into one contiguous
  range per rank; an all_to_all sends each block to the rank that owns its key, which merges what it receives.
  Equal keys land on one rank, so no tie is cut by a rank boundary (sort_blocks). A block's AUC term needs the
  negative weight below it within its segment, its PR-AUC term the weight above it: a running sum on the rank plus
  a carry from the ranks below (above), read from each rank's small summary (one all_gather; segment_scans).
- Grouped AUC and the per-request ranking metrics need each group (request) whole: rows move to the rank
  hash(id) mod ranks (an all_to_all; by_owner).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.collective import Collective

__all__ = ["by_owner", "key_scores", "score_keys", "segment_scans", "sort_blocks"]

# Keys sampled from each rank to choose the splitters: enough that a rank's share is within a few percent of even.
SAMPLES_PER_RANK = 1024
_SCORE_MASK = np.int64(0xFFFFFFFF)


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


def _owner(ids: np.ndarray, world: int) -> np.ndarray:
    """The rank of each id: a 64-bit mix (splitmix64's finalizer) of the id, modulo the ranks."""
    x = np.asarray(ids, dtype=np.int64).view(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(world)).astype(np.int64)


def by_owner(comm: Collective, ids: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every rank's rows of `arrays` moved to the rank owning their id (ids first in the result)."""
    return comm.exchange(_owner(ids, comm.world), [ids, *arrays])
