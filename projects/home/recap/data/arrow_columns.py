"""Arrow columns as numpy arrays, without per-row Python: one column whole, id columns as (offsets, values), and
scalar or fixed-length list columns side by side."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from projects.home.recap.data.layout import ColumnRole
from projects.home.recap.data.list_checks import id_values, is_list


def column_array(table: pa.Table, name: str) -> pa.Array:
    """The named column as one array (a single chunk as is, several combined)."""
    col = table.column(name)
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _matrix(arr: pa.Array, role: ColumnRole, dtype: np.dtype, fill: float) -> np.ndarray:
    values = arr.flatten() if is_list(arr) else arr
    if pa.types.is_decimal(values.type):
        values = pc.cast(values, pa.float64())
    if values.null_count:
        values = pc.fill_null(values, fill)
    out = values.to_numpy(zero_copy_only=False)
    return out.astype(dtype, copy=False).reshape(len(arr), role.width)


def stack_columns(table: pa.Table, roles: tuple[ColumnRole, ...], dtype, fill: float) -> np.ndarray:
    """[N, total width] matrix of scalar and fixed-length list columns side by side; nulls become `fill`."""
    n = table.num_rows
    if not roles:
        return np.zeros((n, 0), dtype=dtype)
    parts = [_matrix(column_array(table, r.name), r, dtype, fill) for r in roles]
    return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=1)


def jagged_ids(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], int64 values) of an id column (integers, or strings hashed by list_checks.id_values): a scalar
    column gives one id per row; a null (scalar or list) none."""
    n = len(arr)
    if not is_list(arr):
        if not arr.null_count:
            return np.arange(n + 1, dtype=np.int64), id_values(arr)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(arr.is_valid().to_numpy(zero_copy_only=False), out=offsets[1:])
        return offsets, id_values(arr.drop_null())
    lengths = pc.list_value_length(arr)
    if lengths.null_count:
        lengths = pc.fill_null(lengths, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.to_numpy(zero_copy_only=False), out=offsets[1:])
    return offsets, id_values(arr.flatten())
