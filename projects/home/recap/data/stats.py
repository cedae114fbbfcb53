"""Statistics of the continuous features for ZScoreLog: mean and std of sign(x)*log1p(|x|) over finite values."""

from __future__ import annotations

import dataclasses

import numpy as np

from projects.home.recap.data.columns import stack_columns
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.data.layout import build_layout
from projects.home.recap.data.validation import validate_scanned

TRANSFORM = "signed_log1p"


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x) * log1p(|x|)."""
    return np.sign(x) * np.log1p(np.abs(x))


def continuous_stats(data: DataConfig, dataset: DatasetConfig, max_rows: int | None = None) -> dict:
    """{"columns", "widths", "mean", "std", "count", "transform"} over the dataset's rows (the first max_rows).

    mean/std have one entry per continuous value in schema order (list columns flattened); a value that is never
    finite, or constant, gets std 1 so standardizing by it is safe.
    """
    full = build_layout(data, [])
    layout = dataclasses.replace(full, binary=(), discrete=(), sparse=(), embeddings=(), labels=(), weight=None,
                                 ids=())
    if not layout.continuous:
        raise ValueError("data.features.continuous is empty: there is nothing to compute statistics of")
    scanned = scan_dataset(dataset.paths, data.ignore_data_errors)
    validate_scanned(layout, scanned, require_labels=False)
    width = sum(r.width for r in layout.continuous)
    total = np.zeros(width)
    total_sq = np.zeros(width)
    finite = np.zeros(width)
    rows = 0
    for source in scanned.files:
        handle = source.open()
        for group in range(source.metadata.num_row_groups):
            if max_rows is not None and rows >= max_rows:
                break
            table = handle.read_row_group(group, columns=layout.columns)
            if max_rows is not None:
                table = table.slice(0, max_rows - rows)
            x = stack_columns(table, layout.continuous, np.float64, np.nan)
            ok = np.isfinite(x)
            y = np.where(ok, signed_log1p(np.where(ok, x, 0.0)), 0.0)
            total += y.sum(0)
            total_sq += (y * y).sum(0)
            finite += ok.sum(0)
            rows += table.num_rows
    mean = total / np.maximum(finite, 1)
    var = np.maximum(total_sq / np.maximum(finite, 1) - mean * mean, 0.0)
    std = np.sqrt(var)
    std[(std == 0) | (finite == 0)] = 1.0
    return {
        "columns": [r.name for r in layout.continuous],
        "widths": [r.width for r in layout.continuous],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "count": rows,
        "transform": TRANSFORM,
    }
