"""Oracle probabilities: the loader fills RecapBatch.oracle from the synthetic data's oracle.<label> columns (by task
name, in the model's task order), through every path a batch takes, and the Evaluator reports them in metrics.json."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from common.batch import RecapBatch
from core.distributed import DistributedContext
from projects.home.recap.data import synthetic
from projects.home.recap.data.config import DataConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.layout import ORACLE_PREFIX
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.synthetic import LABEL_PREFIX, SyntheticSpec, generate
from projects.home.recap.evaluate import Evaluator
from projects.home.recap.inference import padding_batch, zero_weight

SPEC = SyntheticSpec(num_continuous=6, num_binary=2, num_users=300, num_authors=100, num_hashtags=50,
                     embeddings=(("user_embedding", 3),),
                     tasks=(("is_favorited", 0.3), ("is_replied", 0.1), ("is_shared", 0.05)))
# The config lists the tasks in another order than the files' columns (is_favorited, is_replied, is_shared).
TASKS = ["shared", "fav", "reply"]
LABELS = {"fav": "is_favorited", "reply": "is_replied", "shared": "is_shared"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, 700, seed=1, spec=SPEC, splits=(("train", 500.0), ("validation", 200.0)), rows_per_file=150,
             row_group_size=40)
    return out


def config(data_dir, **extra) -> DataConfig:
    cfg = {
        "features": {
            "continuous": [{"name": synthetic.CONTINUOUS, "length": 6}],
            "binary": [{"name": synthetic.BINARY, "length": 2}],
            "discrete": ["client_id", "position"],
            "sparse": ["user_id", "hashtags"],
            "embeddings": [{"name": "user_embedding", "dim": 3}],
            "ids": ["impression_id"],
        },
        "tasks": {t: {"label": LABEL_PREFIX + label} for t, label in LABELS.items()},
        "train": {"paths": [str(data_dir / "train")]},
        "validation": {"validation": {"paths": [str(data_dir / "validation")]}},
        "shuffle_buffer_rows": 96,
        "num_workers": 0,
    }
    cfg.update(extra)
    return DataConfig.model_validate(cfg)


def oracle_by_id(path) -> dict[int, list[float]]:
    """impression_id -> the oracle columns of its row, in TASKS order, read straight from the parquet files."""
    table = ds.dataset(path).to_table()
    columns = [table.column(ORACLE_PREFIX + LABEL_PREFIX + LABELS[t]).to_numpy() for t in TASKS]
    return {int(r): [float(c[i]) for c in columns] for i, r in enumerate(table.column("impression_id").to_numpy())}


def check_oracle(batches: list[RecapBatch], expected: dict[int, list[float]]) -> list[int]:
    ids = []
    for batch in batches:
        assert batch.oracle is not None and batch.oracle.dtype == torch.float32
        assert batch.oracle.shape == (batch.batch_size, len(TASKS))
        for rid, row in zip(batch.ids["impression_id"].tolist(), batch.oracle.tolist()):
            assert row == expected[rid], rid
            ids.append(rid)
    return ids


def test_the_prefix_is_the_generators():
    assert ORACLE_PREFIX == synthetic.ORACLE_PREFIX


@pytest.mark.parametrize("mode,num_workers", [("train", 0), ("train", 2), ("eval", 0), ("eval", 2), ("predict", 1)])
def test_oracle_equals_the_parquet_columns_row_by_row_in_task_order(data_dir, mode, num_workers):
    data = config(data_dir)
    expected = oracle_by_id(data_dir / "train")
    seen = []
    for rank in range(2):
        loader = RecapDataLoader(data, data.train, TASKS, mode, rank, 2, batch_size=32, num_workers=num_workers)
        seen += check_oracle(list(loader), expected)
    assert len(seen) == len(set(seen))
    # Training drops the last partial batch of each rank (shuffled); eval and predict read every row once.
    assert len(seen) == (2 * (500 // 64) * 32 if mode == "train" else 500)
    if mode == "train":
        assert seen != sorted(seen)


def test_oracle_survives_pin_memory_to_device_and_padding(data_dir):
    data = config(data_dir)
    loader = RecapDataLoader(data, data.validation["validation"], TASKS, "eval", batch_size=50,
                             pin_memory=torch.cuda.is_available())
    batch = next(iter(loader))
    moved = batch.to("cpu")
    assert torch.equal(moved.oracle, batch.oracle)
    if torch.cuda.is_available():
        assert torch.equal(batch.pin_memory().to("cuda").oracle.cpu(), batch.oracle)
    padded = zero_weight(batch)
    assert torch.equal(padded.oracle, batch.oracle) and (padded.weights == 0).all()
    pad = padding_batch(data, data.validation["validation"], TASKS, "eval")
    assert pad.oracle.shape == (1, len(TASKS)) and (pad.weights == 0).all()


def test_no_oracle_columns_give_none(tmp_path, data_dir):
    table = pq.read_table(data_dir / "train")
    pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith(ORACLE_PREFIX)]),
                   tmp_path / "plain.parquet")
    data = config(data_dir, train={"paths": [str(tmp_path)]})
    batch = next(iter(RecapDataLoader(data, data.train, TASKS, "eval", batch_size=16)))
    assert batch.oracle is None


def test_some_oracle_columns_missing_give_none_and_say_which(tmp_path, data_dir, caplog):
    table = pq.read_table(data_dir / "train")
    missing = ORACLE_PREFIX + LABEL_PREFIX + "is_replied"
    pq.write_table(table.slice(0, 100), tmp_path / "a.parquet")
    pq.write_table(table.slice(100).drop_columns([missing]), tmp_path / "b.parquet")
    data = config(data_dir, train={"paths": [str(tmp_path)]})
    with caplog.at_level(logging.INFO):
        loader = RecapDataLoader(data, data.train, TASKS, "eval", batch_size=16)
    assert all(b.oracle is None for b in loader)
    assert f"{missing} (in 1 of 2 files)" in caplog.text


def test_an_oracle_column_that_is_not_a_float_is_an_error(tmp_path, data_dir):
    table = pq.read_table(data_dir / "train")
    name = ORACLE_PREFIX + LABEL_PREFIX + "is_shared"
    pq.write_table(table.set_column(table.column_names.index(name), name,
                                    table.column(name).cast("string")), tmp_path / "bad.parquet")
    data = config(data_dir, train={"paths": [str(tmp_path)]})
    with pytest.raises(DataError, match=r"bad\.parquet.*oracle.*data\.tasks\.shared\.label"):
        RecapDataLoader(data, data.train, TASKS, "eval")


class _OracleEcho(nn.Module):
    """A stand-in model whose calibrated probabilities are the batch's first continuous feature squashed."""

    def forward(self, batch: RecapBatch):
        p = torch.sigmoid(torch.nan_to_num(batch.continuous[:, :1])).expand(-1, len(TASKS))
        return None, {"calibrated_probabilities": p}


def test_the_evaluator_writes_the_oracle_block_to_metrics_json(data_dir, tmp_path):
    data = config(data_dir)
    loader = RecapDataLoader(data, data.validation["validation"], TASKS, "eval", batch_size=64)
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")
    evaluator = Evaluator(_OracleEcho(), {"validation": loader}, TASKS, ctx, curve_points=5, save_dir=tmp_path)
    evaluator.evaluate(step=1)
    (path,) = tmp_path.glob("eval/validation/step_1/metrics.json")
    tasks = json.loads(path.read_text())["tasks"]
    assert list(tasks) == TASKS
    table = ds.dataset(data_dir / "validation").to_table()
    for task in TASKS:
        oracle = tasks[task]["oracle"]
        assert oracle["rows"] == 200
        # The oracle's calibration ratio is sum(p_oracle) / sum(y) of this task's own columns.
        p = table.column(ORACLE_PREFIX + LABEL_PREFIX + LABELS[task]).to_numpy().astype(np.float64)
        y = table.column(LABEL_PREFIX + LABELS[task]).to_numpy().astype(np.float64)
        if y.sum():
            assert oracle["calibration"] == pytest.approx(p.sum() / y.sum(), rel=1e-5)
