"""Arrow tables to numpy arrays in batch layout, without per-row Python: value checks and conversion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from projects.home.recap.data.downsampling import downsampling_weights
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.layout import BatchLayout, ColumnRole, SequenceLayout
from projects.home.recap.data.list_checks import (
    action_ids_problem,
    history_problem,
    is_list,
    list_lengths,
    null_ids_problem,
)


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def check_labels(layout: BatchLayout, table: pa.Table, path: str) -> None:
    """Raise DataError naming the file and column for a null label or a label outside {0, 1}."""
    for role in layout.labels:
        if role.name not in table.column_names:
            continue
        arr = _column(table, role.name)
        if arr.null_count:
            raise DataError(f"{arr.null_count} null labels; labels must be 0 or 1", path, role.name)
        values = arr.to_numpy(zero_copy_only=False)
        bad = (values != 0) & (values != 1)
        if bad.any():
            raise DataError(f"{int(bad.sum())} labels outside {{0, 1}} (first: {values[bad][0].item()!r})", path, role.name)


def check_values(layout: BatchLayout, table: pa.Table, path: str) -> None:
    """Raise DataError naming the file and column for values the loader cannot use (bad labels, ragged lists)."""
    check_labels(layout, table, path)
    for role in (*layout.continuous, *layout.binary, *layout.discrete, *layout.embeddings):
        arr = _column(table, role.name)
        if role.length is None:
            continue
        if arr.null_count:
            raise DataError(f"{arr.null_count} null lists in a fixed-length column", path, role.name)
        if not pa.types.is_fixed_size_list(arr.type) and len(arr):
            lengths = pc.list_value_length(arr)
            lo, hi = (v.as_py() for v in pc.min_max(lengths).values())
            if lo != role.length or hi != role.length:
                found = f"lists have length {lo}" if lo == hi else f"list lengths range from {lo} to {hi}"
                raise DataError(f"{found}; {role.key} declares length {role.length}", path, role.name)
    for role in layout.sparse:
        problem = null_ids_problem(_column(table, role.name))
        if problem:
            raise DataError(problem, path, role.name)
    for group in layout.sequences:
        check_sequence_values(group, table, path)
    if layout.weight is not None:
        arr = _column(table, layout.weight.name)
        if arr.null_count:
            raise DataError(f"{arr.null_count} null weights", path, layout.weight.name)
        if len(arr) and pc.min(arr).as_py() < 0:
            raise DataError("negative weights", path, layout.weight.name)


def check_sequence_values(group: SequenceLayout, table: pa.Table, path: str) -> None:
    """Raise DataError (file, column) for a null inside a history list, a row whose lists in the group differ in
    length, or an action id outside [0, num_actions) (list_checks.py, shared with the standalone scorer)."""
    problem = history_problem([(r.name, _column(table, r.name)) for r in group.list_roles()], group.group)
    if problem:
        raise DataError(problem[1], path, problem[0])
    if group.actions is not None and group.num_actions is not None:
        problem = action_ids_problem(_column(table, group.actions.name).flatten(), group.num_actions, group.group)
        if problem:
            raise DataError(problem, path, group.actions.name)


def _recent_first(offsets: np.ndarray, max_length: int, most_recent: str) -> tuple[np.ndarray, np.ndarray]:
    """(new offsets, positions into the values) keeping each row's max_length most recent items, most recent
    first."""
    lengths = np.minimum(offsets[1:] - offsets[:-1], max_length)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    within = np.arange(int(new_offsets[-1]), dtype=np.int64) - np.repeat(new_offsets[:-1], lengths)
    if most_recent == "first":
        positions = np.repeat(offsets[:-1], lengths) + within
    else:  # the last stored item is the most recent one: read each row backwards from its end
        positions = np.repeat(offsets[1:] - 1, lengths) - within
    return new_offsets, positions


def _candidate_ids(arr: pa.Array) -> np.ndarray:
    """One id per row of a candidate column: the scalar, or a list's first id; 0 for a null or an empty list."""
    if not is_list(arr):
        return pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    offsets, values = _jagged(arr)
    out = np.zeros(len(arr), dtype=np.int64)
    has = offsets[1:] > offsets[:-1]
    out[has] = values[offsets[:-1][has]]
    return out


def sequence_arrays(group: SequenceLayout, table: pa.Table) -> dict[str, np.ndarray]:
    """One history group of a table: "offsets" [N+1] after keeping the max_length most recent items, then per
    id column "id:<col>" int64 values, "actions" int64, "continuous" [M, C] float32 (most recent first), and
    per id column with a candidate "candidate:<col>" [N] int64."""
    first = _column(table, group.ids[0].name)
    offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(list_lengths(first), out=offsets[1:])
    new_offsets, positions = _recent_first(offsets, group.max_length, group.most_recent)
    out: dict[str, np.ndarray] = {"offsets": new_offsets}

    def values(role: ColumnRole, dtype) -> np.ndarray:
        arr = _column(table, role.name)
        # The list's own offsets may start past 0 (a sliced table): flatten() gives the values of these rows only.
        return np.take(arr.flatten().to_numpy(zero_copy_only=False), positions).astype(dtype, copy=False)

    for role in group.ids:
        out["id:" + role.name] = values(role, np.int64)
    if group.actions is not None:
        out["actions"] = values(group.actions, np.int64)
    if group.continuous:
        out["continuous"] = np.stack([values(r, np.float32) for r in group.continuous], axis=1)
    for role, candidate in zip(group.ids, group.candidates):
        if candidate is not None:
            out["candidate:" + role.name] = _candidate_ids(_column(table, candidate.name))
    return out


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


def null_discrete_counts(layout: BatchLayout, table: pa.Table) -> dict[str, int]:
    """{discrete column: its null values in `table`} for the columns that have any (they are read as id 0)."""
    counts = {}
    for role in layout.discrete:
        arr = _column(table, role.name)
        nulls = (arr.null_count + arr.flatten().null_count) if is_list(arr) else arr.null_count
        if nulls:
            counts[role.name] = nulls
    return counts


def _matrix(arr: pa.Array, role: ColumnRole, dtype: np.dtype, fill: float) -> np.ndarray:
    values = arr.flatten() if is_list(arr) else arr
    if values.null_count:
        values = pc.fill_null(values, fill)
    out = values.to_numpy(zero_copy_only=False)
    return out.astype(dtype, copy=False).reshape(len(arr), role.width)


def stack_columns(table: pa.Table, roles: tuple[ColumnRole, ...], dtype, fill: float) -> np.ndarray:
    """[N, total width] matrix of scalar and fixed-length list columns side by side; nulls become `fill`."""
    n = table.num_rows
    if not roles:
        return np.zeros((n, 0), dtype=dtype)
    parts = [_matrix(_column(table, r.name), r, dtype, fill) for r in roles]
    return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=1)


def _jagged(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], values) of an id column: a scalar column gives one id per row; a null (scalar or list) none."""
    n = len(arr)
    if not is_list(arr):
        if not arr.null_count:
            return np.arange(n + 1, dtype=np.int64), arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(arr.is_valid().to_numpy(zero_copy_only=False), out=offsets[1:])
        return offsets, arr.drop_null().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    lengths = pc.list_value_length(arr)
    if lengths.null_count:
        lengths = pc.fill_null(lengths, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.to_numpy(zero_copy_only=False), out=offsets[1:])
    values = arr.flatten()
    return offsets, values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


@dataclass
class ArrayBlock:
    """Rows in batch layout as numpy arrays: the form a worker converts, shuffles and ships rows in."""

    continuous: np.ndarray  # [N, C] float32
    binary: np.ndarray  # [N, Nb] float32
    discrete: np.ndarray  # [N, D] int64
    embeddings: np.ndarray  # [N, E] float32
    labels: np.ndarray  # [N, T] float32
    weights: np.ndarray  # [N, T] float32
    sparse: list[tuple[np.ndarray, np.ndarray]]  # per sparse column: (offsets [N+1] int64, values int64)
    ids: dict[str, np.ndarray]
    oracle: np.ndarray | None = None  # [N, T] float32 true probabilities, when the layout reads them
    # History groups (sequence_arrays): {group: {"offsets", "id:<col>", "actions", "continuous", "candidate:<col>"}}
    sequences: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.sparse[0][0]) - 1 if self.labels is None else self.labels.shape[0]

    @staticmethod
    def concat_sparse_and_ids(blocks: list[ArrayBlock]) -> ArrayBlock:
        """A block holding the sparse columns and ids of several blocks, one after another (dense parts left out)."""
        if len(blocks) == 1:
            return blocks[0]
        sparse = []
        for k in range(len(blocks[0].sparse)):
            offsets, values, shift = [np.zeros(1, dtype=np.int64)], [], 0
            for b in blocks:
                off, vals = b.sparse[k]
                offsets.append(off[1:] - off[0] + shift)
                values.append(vals[off[0] : off[-1]])
                shift += int(off[-1] - off[0])
            sparse.append((np.concatenate(offsets), np.concatenate(values)))
        return ArrayBlock(
            **{f: None for f in _DENSE},
            sparse=sparse,
            ids={k: np.concatenate([b.ids[k] for b in blocks]) for k in blocks[0].ids},
        )

    def take_ids(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The ids of the given rows, in the given order."""
        return {k: v[rows] for k, v in self.ids.items()}


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
    for f in _DENSE:
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


_DENSE = ("continuous", "binary", "discrete", "embeddings", "labels", "weights", "oracle")


def to_arrays(layout: BatchLayout, table: pa.Table) -> ArrayBlock:
    """Convert a table holding the layout's columns; missing label columns (prediction) give NaN labels, 0 weights."""
    n = table.num_rows
    t = len(layout.labels)
    labels = np.empty((n, t), dtype=np.float32)
    present = np.ones(t, dtype=bool)
    for j, role in enumerate(layout.labels):
        if role.name in table.column_names:
            labels[:, j] = _column(table, role.name).to_numpy(zero_copy_only=False)
        else:
            labels[:, j] = np.nan
            present[j] = False
    row_weight = None
    if layout.weight is not None:
        row_weight = _column(table, layout.weight.name).to_numpy(zero_copy_only=False).astype(np.float32)
    weights = downsampling_weights(np.nan_to_num(labels), layout.pos_rates, layout.neg_rates, row_weight)
    weights[:, ~present] = 0.0
    sparse = [_jagged(_column(table, role.name)) for role in layout.sparse]
    return ArrayBlock(
        continuous=stack_columns(table, layout.continuous, np.float32, np.nan),
        binary=stack_columns(table, layout.binary, np.float32, 0.0),
        discrete=stack_columns(table, layout.discrete, np.int64, 0),
        embeddings=stack_columns(table, layout.embeddings, np.float32, 0.0),
        labels=labels,
        weights=weights,
        sparse=sparse,
        ids={r.name: _column(table, r.name).to_numpy(zero_copy_only=False) for r in layout.ids},
        oracle=stack_columns(table, layout.oracle, np.float32, np.nan) if layout.oracle else None,
        sequences={group.group: sequence_arrays(group, table) for group in layout.sequences},
    )
