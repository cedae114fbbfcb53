"""Chunk assembly: the rows of several ArrayBlocks, in a given order, as the tensors a chunk of batches travels in
(dense parts copied once, sparse ids laid out batch by batch, history groups gathered row by row)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from projects.home.recap.data.array_block import DENSE_PARTS, ArrayBlock


def assemble_sequences(blocks: list[ArrayBlock], rows: np.ndarray, shared: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The history groups of rows `rows` (indices into the blocks one after another), in output row order: per group
    "lengths" [n] and "offsets" [n+1] int64, the per-item values concatenated row by row, and the per-row
    candidate ids."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in blocks[0].sequences:
        parts = [b.sequences[group] for b in blocks]
        lengths_all = np.concatenate([p["offsets"][1:] - p["offsets"][:-1] for p in parts])
        starts_all = np.concatenate([p["offsets"][:-1] + shift for p, shift in
                                     zip(parts, np.cumsum([0] + [int(p["offsets"][-1]) for p in parts[:-1]]))])
        lengths = lengths_all[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        gather = np.repeat(starts_all[rows] - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
        fields: dict[str, torch.Tensor] = {"lengths": torch.from_numpy(lengths), "offsets": torch.from_numpy(offsets)}
        for key in parts[0]:
            if key == "offsets":
                continue
            pooled = np.concatenate([p[key] for p in parts]) if len(parts) > 1 else parts[0][key]
            index = rows if key.startswith("candidate:") else gather
            array, tensor = _empty((len(index), *pooled.shape[1:]), pooled.dtype, shared)
            np.take(pooled, index, axis=0, out=array)
            fields[key] = tensor
        out[group] = fields
    return out


def _row_view(a: np.ndarray) -> np.ndarray:
    # Each row as one opaque item: fancy indexing then moves whole rows, which numpy does far faster than 2-D rows.
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1)


def _empty(shape: tuple[int, ...], dtype: np.dtype, shared: bool) -> tuple[np.ndarray, torch.Tensor]:
    tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype)
    if shared and tensor.numel():
        # Allocated in shared memory, the tensor crosses from a DataLoader worker without another copy.
        tensor.share_memory_()
    return tensor.numpy(), tensor


def _sparse(columns: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, batch_size: int, shared: bool) -> dict:
    """Id columns ((offsets [N+1], ids) each) of rows `rows`, laid out batch by batch in KeyedJaggedTensor order.

    Within batch j (rows j*B .. j*B+B of the output) the ids of key 0 for each row come first, then key 1, ...;
    lengths follow the same order, so batch j's lengths are lengths[K*j*B : K*(j*B + its rows)] and its ids
    values[value_bounds[j] : value_bounds[j+1]]: a batch's KeyedJaggedTensor is two slices, no copy.
    """
    n = len(rows)
    k = len(columns)
    lengths = np.empty((k, n), dtype=np.int64)
    starts = np.empty((k, n), dtype=np.int64)  # where each row's ids begin in all keys' ids one after another
    pool, base = [], 0
    for i, (off, vals) in enumerate(columns):
        lengths[i] = (off[1:] - off[:-1])[rows]
        starts[i] = off[:-1][rows] + base
        pool.append(vals)
        base += len(vals)
    full = n // batch_size * batch_size

    def batch_major(a: np.ndarray) -> np.ndarray:
        head = a[:, :full].reshape(k, -1, batch_size).transpose(1, 0, 2).ravel()
        return np.concatenate([head, a[:, full:].ravel()])

    seg_lengths, seg_starts = batch_major(lengths), batch_major(starts)
    ends = np.cumsum(seg_lengths)
    total = int(ends[-1]) if len(ends) else 0
    # Position p of segment s reads pool[seg_starts[s] + p]: one gather for every key and batch.
    gather = np.repeat(seg_starts - (ends - seg_lengths), seg_lengths) + np.arange(total)
    values, values_t = _empty((total,), np.int64, shared)
    np.take(np.concatenate(pool) if len(pool) > 1 else pool[0], gather, out=values, mode="clip")
    bounds = np.arange(0, k * full + 1, k * batch_size)
    if n > full:
        bounds = np.append(bounds, k * n)
    value_bounds = np.concatenate([[0], ends])[bounds]
    lengths_out, lengths_t = _empty((len(seg_lengths),), np.int32, shared)
    lengths_out[:] = seg_lengths
    return {"sparse_values": values_t, "sparse_lengths": lengths_t,
            "sparse_value_bounds": torch.from_numpy(np.ascontiguousarray(value_bounds, dtype=np.int64))}


def _nonfinite_counts(values: np.ndarray) -> np.ndarray | None:
    """Non-finite values per row of a [rows, width] matrix, or None when there are none."""
    if not values.size:
        return None
    # A row sum is non-finite when the row holds NaN or inf (or overflows): a cheap pass finds the few candidate
    # rows, which are then counted exactly.
    candidates = np.flatnonzero(~np.isfinite(values.sum(axis=1)))
    if not len(candidates):
        return None
    counts = np.zeros(values.shape[0], dtype=np.int64)
    counts[candidates] = np.count_nonzero(~np.isfinite(values[candidates]), axis=1)
    return counts


def _nonfinite_per_row(continuous: np.ndarray, sequences: dict[str, dict[str, torch.Tensor]] | None = None
                       ) -> np.ndarray:
    """[n+1] running count of non-finite values per row (so any batch's count is one subtraction): the row's
    continuous features and its history items' continuous values, which the model maps to 0 alike."""
    n = continuous.shape[0]
    counts = _nonfinite_counts(continuous)
    for fields in (sequences or {}).values():
        per_item = _nonfinite_counts(fields["continuous"].numpy()) if "continuous" in fields else None
        if per_item is None:
            continue
        running = np.concatenate([[0], np.cumsum(per_item)])
        offsets = fields["offsets"].numpy()
        counts = (0 if counts is None else counts) + running[offsets[1:]] - running[offsets[:-1]]
    out = np.zeros(n + 1, dtype=np.int64)
    if counts is not None:
        np.cumsum(counts, out=out[1:])
    return out


def assemble(blocks: list[ArrayBlock], rows: np.ndarray, batch_size: int, shared: bool,
             empty: Callable[[tuple[int, ...], np.dtype, bool], tuple[np.ndarray, torch.Tensor]] | None = None) -> dict:
    """Rows `rows` (indices into the blocks one after another) as the tensors a chunk of batches travels in.

    Dense parts are written straight from each block into the output (one copy, no intermediate concatenation);
    sparse ids are laid out batch by batch (see _sparse). Batches are views of these tensors. `empty` allocates the
    dense outputs (default: ordinary, or shared-memory, tensors; the prepared layout uses huge pages).
    """
    empty = empty or _empty
    n = len(rows)
    starts = np.cumsum([0] + [b.num_rows for b in blocks])
    is_range = n == starts[-1] and (n == 0 or (rows[0] == 0 and (np.diff(rows) == 1).all()))
    is_permutation = not is_range and n == starts[-1] and (np.bincount(rows, minlength=n) == 1).all()
    if is_permutation:
        destination = np.empty(n, dtype=np.int64)
        destination[rows] = np.arange(n)
    picks = []  # per block: (output rows, its rows to take, or None for all in order)
    for b, lo in zip(blocks, starts[:-1]):
        if is_range:
            picks.append((slice(lo, lo + b.num_rows), None))
        elif is_permutation:
            picks.append((destination[lo : lo + b.num_rows], None))
        else:
            where = np.nonzero((rows >= lo) & (rows < lo + b.num_rows))[0]
            picks.append((where, rows[where] - lo))
    out: dict = {}
    for f in DENSE_PARTS:
        first = getattr(blocks[0], f)
        if first is None:  # no oracle columns
            continue
        array, tensor = empty((n, first.shape[1]), first.dtype, shared)
        if first.shape[1]:
            target = _row_view(array)
            for b, (dst, src) in zip(blocks, picks):
                part = _row_view(np.ascontiguousarray(getattr(b, f)))
                target[dst] = part if src is None else part[src]
        out[f] = tensor
    merged = ArrayBlock.concat_sparse_and_ids(blocks)
    if merged.sparse:
        out.update(_sparse(merged.sparse, rows, batch_size, shared))
    out["ids"] = merged.take_ids(rows)
    if blocks[0].sequences:
        out["sequences"] = assemble_sequences(blocks, rows, shared)
    out["nonfinite"] = torch.from_numpy(_nonfinite_per_row(out["continuous"].numpy(), out.get("sequences")))
    return out
