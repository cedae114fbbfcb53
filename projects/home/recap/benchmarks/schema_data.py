"""Temporary parquet data in a config's schema: every column the config reads, random values of the right types and
widths (what `recap benchmark` and `recap data benchmark` read when they measure the loader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.schema import RecapConfig

__all__ = ["row_bytes", "write_schema_parquet"]


def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def write_schema_parquet(config: RecapConfig, path: Path, rows: int, seed: int = 0, row_group_rows: int = 8192) -> Path:
    """A parquet file with every column the config reads (random values of the right types and widths)."""
    rng = np.random.default_rng(seed)
    f = config.data.features
    columns: dict[str, pa.Array] = {}
    for spec in f.continuous:
        values = np.exp(rng.standard_normal((rows, spec.width), dtype=np.float32) * 2)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for spec in f.binary:
        values = (rng.random((rows, spec.width), dtype=np.float32) < 0.3).astype(np.float32)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for spec in f.discrete:
        values = rng.integers(0, 40, (rows, spec.width), dtype=np.int64)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for name in f.sparse:
        counts = rng.integers(0, 4, rows)
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        ids = rng.integers(-(1 << 40), 1 << 40, int(offsets[-1]), dtype=np.int64)
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    for emb in f.embeddings:
        columns[emb.name] = _fixed_list(rng.standard_normal((rows, emb.dim), dtype=np.float32))
    for name in f.ids:
        columns[name] = pa.array(np.arange(rows, dtype=np.int64))
    for group in f.sequences.values():
        # Full histories: every row holds max_length items (the loader's worst case).
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * group.max_length)
        n = rows * group.max_length
        for item in group.ids:
            columns[item.name] = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 1 << 40, n)))
            if item.candidate and item.candidate not in columns:
                columns[item.candidate] = pa.array(rng.integers(0, 1 << 40, rows))
        if group.actions:
            columns[group.actions] = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 4, n)))
        for name in group.continuous:
            ages = np.sort(rng.exponential(24.0, (rows, group.max_length)).astype(np.float32), axis=1)
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(ages.reshape(-1)))
    if f.weight:
        columns[f.weight] = pa.array(rng.random(rows, dtype=np.float32) + 0.5)
    for task in config.data.tasks.values():
        columns[task.label] = pa.array((rng.random(rows) < 0.1).astype(np.int8))
    table = pa.table(columns)
    floats = [n for n, t in zip(table.column_names, table.schema.types)
              if pa.types.is_floating(t) or (pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type))]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Random floats do not compress; the other columns get parquet's usual snappy.
    pq.write_table(table, path, row_group_size=row_group_rows,
                   compression={n: "none" if n in floats else "snappy" for n in table.column_names})
    return path


def row_bytes(config: RecapConfig) -> int:
    """About the bytes of one row of the config in memory (to bound the temporary file's size)."""
    f = config.data.features
    return 4 * (f.num_continuous + f.num_binary + sum(e.dim for e in f.embeddings)) + 8 * (f.num_discrete + 8)

