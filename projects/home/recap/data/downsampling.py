"""Downsampling: per-task weights that undo sampled logs, and dropping all-negative rows with reweighting.

Logs whose positives were kept at rate pos_rate and negatives at neg_rate are unbiased again with the sample weight
w = y / pos_rate + (1 - y) / neg_rate. Dropping a fraction of the rows that are negative for every task and giving the
kept ones weight 1 / keep_rate leaves the expected weighted loss of every task unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def downsampling_weights(
    labels: np.ndarray,
    pos_rates: Sequence[float],
    neg_rates: Sequence[float],
    row_weight: np.ndarray | None = None,
) -> np.ndarray:
    """[N, T] weights y/pos_rate + (1-y)/neg_rate per task, times an optional [N] row weight."""
    pos = 1.0 / np.asarray(pos_rates, dtype=np.float32)
    neg = 1.0 / np.asarray(neg_rates, dtype=np.float32)
    weights = labels.astype(np.float32, copy=False) * (pos - neg) + neg
    if row_weight is not None:
        weights *= row_weight.astype(np.float32, copy=False)[:, None]
    return weights.astype(np.float32, copy=False)


def all_negative(table: pa.Table, label_columns: Sequence[str]) -> np.ndarray:
    """[N] bool: rows whose every label is 0."""
    any_positive = np.zeros(table.num_rows, dtype=bool)
    for name in label_columns:
        any_positive |= table.column(name).to_numpy(zero_copy_only=False).astype(bool)
    return ~any_positive


def downsample_negatives(
    table: pa.Table,
    label_columns: Sequence[str],
    keep_rate: float,
    rng: np.random.Generator,
    weight_column: str,
) -> pa.Table:
    """Keep each all-negative row with probability keep_rate and multiply its weight column by 1/keep_rate.

    Rows with any positive label are all kept. The weight column is created (as 1.0) when the table has none.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    negative = all_negative(table, label_columns)
    keep = ~negative | (rng.random(table.num_rows) < keep_rate)
    if weight_column in table.column_names:
        weight = table.column(weight_column).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        weight = np.ones(table.num_rows, dtype=np.float64)
    weight = np.where(negative, weight / keep_rate, weight)
    out = table.filter(pa.array(keep))
    column = pa.array(weight[keep], type=pa.float32())
    if weight_column in out.column_names:
        return out.set_column(out.column_names.index(weight_column), weight_column, column)
    return out.append_column(weight_column, column)


