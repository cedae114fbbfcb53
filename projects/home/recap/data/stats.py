"""Statistics of the continuous features: mean and std of sign(x)*log1p(|x|) over finite values (for ZScoreLog) and
quantile bin boundaries (for model.numeric_embeddings)."""

from __future__ import annotations

import dataclasses

import numpy as np

from projects.home.recap.data.columns import stack_columns
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.data.layout import build_layout
from projects.home.recap.data.validation import validate_scanned

TRANSFORM = "signed_log1p"
# Boundaries: at most MAX_BINS + 1 per value, from at most QUANTILE_SAMPLE_ROWS rows (a seeded sample beyond that).
MAX_BINS = 64
QUANTILE_SAMPLE_ROWS = 1_000_000


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x) * log1p(|x|)."""
    return np.sign(x) * np.log1p(np.abs(x))


def quantile_boundaries(values: np.ndarray, max_bins: int = MAX_BINS) -> list[float]:
    """At most max_bins + 1 sorted distinct bin boundaries of the finite values (empty if none is finite).

    With at most max_bins + 1 distinct values, the values themselves. Otherwise each value held by more than
    1/max_bins of the finite values (a point mass, such as the zero of a mostly-zero amount) is a boundary, and the
    remaining boundaries are equally spaced quantiles (0 to 1) of the other values: equal-mass bins that are not
    spent on repeats of a point mass."""
    if max_bins < 1:
        raise ValueError(f"max_bins must be at least 1, got {max_bins}")
    finite = values[np.isfinite(values)]
    distinct, counts = np.unique(finite, return_counts=True)
    if len(distinct) > max_bins + 1:
        heavy = distinct[counts * max_bins > len(finite)]
        rest = finite[~np.isin(finite, heavy)]
        points = max_bins + 1 - len(heavy)
        quantiles = np.quantile(rest, np.linspace(0.0, 1.0, points)) if len(rest) and points >= 2 else []
        distinct = np.concatenate([heavy, quantiles])
    # Rounded to float32 (the model's precision) before deduplicating, so the model sees them strictly increasing.
    return np.unique(distinct.astype(np.float32)).astype(np.float64).tolist()


def continuous_stats(data: DataConfig, dataset: DatasetConfig, max_rows: int | None = None,
                     max_bins: int = MAX_BINS, quantile_sample_rows: int = QUANTILE_SAMPLE_ROWS) -> dict:
    """{"columns", "widths", "mean", "std", "count", "transform", "max_bins", "boundaries"} over the dataset's rows
    (the first max_rows).

    mean/std/boundaries have one entry per continuous value in schema order (list columns flattened); a value that
    is never finite, or constant, gets std 1 so standardizing by it is safe. boundaries[i] is quantile_boundaries of
    value i over all rows, or over a seeded random sample of about quantile_sample_rows rows when there are more:
    the same data gives the same file.
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
    total_rows = sum(source.metadata.num_rows for source in scanned.files)
    if max_rows is not None:
        total_rows = min(total_rows, max_rows)
    keep_fraction = min(1.0, quantile_sample_rows / max(total_rows, 1))
    rng = np.random.default_rng(0)
    kept: list[np.ndarray] = []
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
            kept.append(x if keep_fraction >= 1.0 else x[rng.random(len(x)) < keep_fraction])
            rows += table.num_rows
    mean = total / np.maximum(finite, 1)
    var = np.maximum(total_sq / np.maximum(finite, 1) - mean * mean, 0.0)
    std = np.sqrt(var)
    std[(std == 0) | (finite == 0)] = 1.0
    sample = np.concatenate(kept) if kept else np.zeros((0, width))
    return {
        "columns": [r.name for r in layout.continuous],
        "widths": [r.width for r in layout.continuous],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "count": rows,
        "transform": TRANSFORM,
        "max_bins": max_bins,
        "boundaries": [quantile_boundaries(sample[:, i], max_bins) for i in range(width)],
    }
