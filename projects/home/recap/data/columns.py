"""Arrow tables to numpy arrays in batch layout, without per-row Python: value checks and conversion.

The conversion's parts live in their own modules, and their public names are importable from here too:
arrow_columns.py (one Arrow column as arrays), sequence_columns.py (history list columns), array_block.py
(ArrayBlock) and assembly.py (rows of blocks into the tensors a chunk of batches travels in).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from projects.home.recap.data.array_block import ArrayBlock
from projects.home.recap.data.arrow_columns import column_array, jagged_ids, stack_columns
from projects.home.recap.data.assembly import assemble, assemble_sequences
from projects.home.recap.data.downsampling import downsampling_weights
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.layout import BatchLayout
from projects.home.recap.data.list_checks import is_list, null_ids_problem
from projects.home.recap.data.sequence_columns import check_sequence_values, sequence_arrays

__all__ = [
    "ArrayBlock",
    "assemble",
    "assemble_sequences",
    "check_labels",
    "check_sequence_values",
    "check_values",
    "null_discrete_counts",
    "sequence_arrays",
    "stack_columns",
    "to_arrays",
]


def check_labels(layout: BatchLayout, table: pa.Table, path: str) -> None:
    """Raise DataError naming the file and column for a null label or a label outside {0, 1}."""
    for role in layout.labels:
        if role.name not in table.column_names:
            continue
        arr = column_array(table, role.name)
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
        arr = column_array(table, role.name)
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
        problem = null_ids_problem(column_array(table, role.name))
        if problem:
            raise DataError(problem, path, role.name)
    for group in layout.sequences:
        check_sequence_values(group, table, path)
    if layout.weight is not None:
        arr = column_array(table, layout.weight.name)
        if arr.null_count:
            raise DataError(f"{arr.null_count} null weights", path, layout.weight.name)
        if len(arr) and pc.min(arr).as_py() < 0:
            raise DataError("negative weights", path, layout.weight.name)


def null_discrete_counts(layout: BatchLayout, table: pa.Table) -> dict[str, int]:
    """{discrete column: its null values in `table`} for the columns that have any (they are read as id 0)."""
    counts = {}
    for role in layout.discrete:
        arr = column_array(table, role.name)
        nulls = (arr.null_count + arr.flatten().null_count) if is_list(arr) else arr.null_count
        if nulls:
            counts[role.name] = nulls
    return counts


def to_arrays(layout: BatchLayout, table: pa.Table) -> ArrayBlock:
    """Convert a table holding the layout's columns; missing label columns (prediction) give NaN labels, 0 weights."""
    n = table.num_rows
    t = len(layout.labels)
    labels = np.empty((n, t), dtype=np.float32)
    present = np.ones(t, dtype=bool)
    for j, role in enumerate(layout.labels):
        if role.name in table.column_names:
            labels[:, j] = column_array(table, role.name).to_numpy(zero_copy_only=False)
        else:
            labels[:, j] = np.nan
            present[j] = False
    row_weight = None
    if layout.weight is not None:
        row_weight = column_array(table, layout.weight.name).to_numpy(zero_copy_only=False).astype(np.float32)
    weights = downsampling_weights(np.nan_to_num(labels), layout.pos_rates, layout.neg_rates, row_weight)
    weights[:, ~present] = 0.0
    sparse = [jagged_ids(column_array(table, role.name)) for role in layout.sparse]
    return ArrayBlock(
        continuous=stack_columns(table, layout.continuous, np.float32, np.nan),
        binary=stack_columns(table, layout.binary, np.float32, 0.0),
        discrete=stack_columns(table, layout.discrete, np.int64, 0),
        embeddings=stack_columns(table, layout.embeddings, np.float32, 0.0),
        labels=labels,
        weights=weights,
        sparse=sparse,
        ids={r.name: column_array(table, r.name).to_numpy(zero_copy_only=False) for r in layout.ids},
        oracle=stack_columns(table, layout.oracle, np.float32, np.nan) if layout.oracle else None,
        sequences={group.group: sequence_arrays(group, table) for group in layout.sequences},
    )
