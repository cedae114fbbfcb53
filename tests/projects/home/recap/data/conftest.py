"""Small parquet datasets written for the data tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.data.config import DataConfig


def write_rows(path, start: int, n: int, row_group_size: int, seed: int = 0, **overrides) -> None:
    """A parquet file of rows start..start+n with every feature kind; `overrides` replace columns."""
    rng = np.random.default_rng(seed + start)
    rid = np.arange(start, start + n)
    counts = rid % 3  # 0, 1 or 2 ids per row: row r holds ids 10r, 10r+1, ...
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    id_values = np.concatenate([10 * r + np.arange(c) for r, c in zip(rid, counts)] + [np.zeros(0, np.int64)])
    columns = {
        "row_id": pa.array(rid),
        "name": pa.array([f"r{i}" for i in rid]),
        # Row r: [r, -r, r/2].
        "cont": pa.FixedSizeListArray.from_arrays(
            pa.array(np.stack([rid, -rid, rid / 2], 1).astype(np.float32).ravel()), 3),
        "scalar_cont": pa.array(rng.lognormal(size=n)),
        "bin": pa.array((rid % 2).astype(np.int8)),
        "disc": pa.array(rid % 5),
        "ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(id_values.astype(np.int64))),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(rid, 2).astype(np.float32)), 2),
        # Label columns deliberately not in task order: label_b first.
        "label_b": pa.array((rid % 2 == 0).astype(np.int64)),
        "label_a": pa.array((rid % 3 == 0).astype(np.int64)),
        "w": pa.array(np.full(n, 2.0, dtype=np.float32)),
    }
    columns.update(overrides)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def data_config(paths, **extra) -> DataConfig:
    """A data config over the test files' columns."""
    cfg = {
        "features": {
            "continuous": [{"name": "cont", "length": 3}, "scalar_cont"],
            "binary": ["bin"],
            "discrete": ["disc"],
            "sparse": ["ids"],
            "embeddings": [{"name": "emb", "dim": 2}],
            "ids": ["row_id", "name"],
        },
        "tasks": {"a": {"label": "label_a"}, "b": {"label": "label_b", "pos_rate": 0.5, "neg_rate": 0.25}},
        "train": {"paths": paths},
        "shuffle_buffer_rows": 16,
        "num_workers": 0,
    }
    cfg.update(extra)
    return DataConfig.model_validate(cfg)


@pytest.fixture
def uneven_dir(tmp_path):
    """Three files, 180 rows, row groups of uneven sizes (10, 7, 33 rows)."""
    d = tmp_path / "uneven"
    d.mkdir()
    write_rows(d / "f0.parquet", 0, 53, 10)
    write_rows(d / "f1.parquet", 53, 7, 7)
    write_rows(d / "f2.parquet", 60, 120, 33)
    return d
