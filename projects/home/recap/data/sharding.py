"""How one epoch's rows are split across ranks, DataLoader workers, shuffle buffers and batches.

An epoch is a virtual sequence of rows: the dataset's row groups in a (seeded, per-epoch) order, one after another.
Each rank takes a contiguous range of that sequence, each worker a batch-aligned contiguous range of its rank's, and
each worker reads its range in batch-aligned "fills" (the shuffle buffer). Everything is computed from parquet
metadata, so every rank and worker agrees on the split without communicating, and a position can be skipped to
without reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """Rows [start, stop) of row group `unit` (an index into ScannedDataset.units)."""

    unit: int
    start: int
    stop: int


def unit_order(num_units: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The row-group order of an epoch: file order, or a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_units)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_units)


def train_batches_per_rank(num_rows: int, world_size: int, batch_size: int) -> int:
    """Full batches every rank yields in a training epoch (equal on all ranks; the remainder rows are dropped)."""
    return num_rows // (world_size * batch_size)


def rank_range(num_rows: int, rank: int, world_size: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """The rank's rows of the epoch sequence: equal whole batches when drop_last, else an even split of all rows."""
    if drop_last:
        per_rank = train_batches_per_rank(num_rows, world_size, batch_size) * batch_size
        return rank * per_rank, (rank + 1) * per_rank
    return rank * num_rows // world_size, (rank + 1) * num_rows // world_size


def num_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    """Batches in `rows` rows."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def worker_range(
    start: int, stop: int, batch_size: int, drop_last: bool, num_workers: int, worker: int
) -> tuple[int, int, int]:
    """(first row, end row, batch count) of a worker: whole batches, the first workers taking one more if uneven.

    Every worker starts on a batch boundary of the rank's range, so only the rank's last batch can be short.
    """
    total = num_batches(stop - start, batch_size, drop_last)
    base, extra = divmod(total, num_workers)
    first = worker * base + min(worker, extra)
    count = base + (worker < extra)
    lo = start + first * batch_size
    hi = min(start + (first + count) * batch_size, stop)
    return lo, hi, count


def fill_size(buffer_rows: int, batch_size: int) -> int:
    """Rows per fill: the shuffle buffer rounded up to whole batches."""
    return max(1, -(-buffer_rows // batch_size)) * batch_size


def spans(rows_in_order: np.ndarray, order: np.ndarray, start: int, stop: int) -> list[Span]:
    """The pieces of row groups that make rows [start, stop) of the epoch sequence."""
    ends = np.cumsum(rows_in_order)
    out: list[Span] = []
    i = int(np.searchsorted(ends, start, side="right"))
    while start < stop and i < len(order):
        begin = int(ends[i] - rows_in_order[i])
        take_to = min(stop, int(ends[i]))
        out.append(Span(int(order[i]), start - begin, take_to - begin))
        start = take_to
        i += 1
    return out


def fills(lo: int, hi: int, fill_rows: int) -> list[tuple[int, int]]:
    """A worker's range cut into fills of fill_rows rows (the last may be shorter)."""
    return [(s, min(s + fill_rows, hi)) for s in range(lo, hi, fill_rows)]


def resume_points(batches_per_fill: list[list[int]], skip: int) -> list[tuple[int, int]]:
    """Per worker, (fill index, batches into that fill) at which to start so the rank skips `skip` batches.

    Workers send whole fills and the DataLoader takes them round-robin (fill r of worker 0, of worker 1, ..., then
    fill r+1), skipping workers that have run out; this replays that order on counts alone.
    """
    points = [(0, 0)] * len(batches_per_fill)
    remaining = skip
    r = 0
    while remaining > 0 and any(r < len(b) for b in batches_per_fill):
        for k, per_fill in enumerate(batches_per_fill):
            if remaining == 0 or r >= len(per_fill):
                continue
            take = min(per_fill[r], remaining)
            points[k] = (r + 1, 0) if take == per_fill[r] else (r, take)
            remaining -= take
        r += 1
    return points
