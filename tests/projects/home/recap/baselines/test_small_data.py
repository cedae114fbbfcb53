"""The small rating/click generator: its columns and types, the split, determinism, and that its planted effects are
learnable (the oracle ranks well; per-user and per-item biases alone beat a constant)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.metrics import auc, log_loss
from projects.home.recap.baselines.small_data import (
    CONTINUOUS,
    DISCRETE,
    MANIFEST,
    TAGS,
    TASK_RATES,
    SmallSpec,
    generate_small,
    read_manifest,
)
from projects.home.recap.main import main

ROWS = 20_000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    directory = tmp_path_factory.mktemp("small")
    generate_small(directory, ROWS, seed=3)
    return directory


def _split(directory, split: str) -> pa.Table:
    return pq.read_table(directory / split / "part-00000.parquet")


def test_columns_types_and_ranges(small):
    table = _split(small, "train")
    schema = table.schema
    for name in ("user_id", "item_id", *DISCRETE):
        assert schema.field(name).type == pa.int64(), name
    for name in CONTINUOUS:
        assert schema.field(name).type == pa.float32(), name
    assert schema.field(TAGS).type == pa.list_(pa.int64())
    spec = SmallSpec()
    users, items = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    assert 0 <= users.min() and users.max() < spec.num_users and 0 <= items.min() and items.max() < spec.num_items
    assert set(np.unique(table.column("hour_of_day").to_numpy())) <= set(range(24))
    assert table.column("item_category").to_numpy().max() < spec.num_categories
    lengths = pc.list_value_length(table.column(TAGS)).to_numpy()
    assert lengths.min() >= 1 and lengths.max() <= spec.max_tags
    assert pc.list_flatten(table.column(TAGS)).to_numpy().max() < spec.num_tags
    # Heavy tails: the largest value is far beyond the median.
    for name in ("item_age_days", "session_seconds"):
        values = table.column(name).to_numpy()
        assert values.min() > 0 and values.max() > 20 * np.median(values), name
    for label, rate in TASK_RATES:
        labels = table.column(label).to_numpy()
        assert set(np.unique(labels)) == {0, 1}
        assert labels.mean() == pytest.approx(rate, rel=0.15), label
        oracle = table.column(f"oracle.{label}").to_numpy()
        assert table.schema.field(f"oracle.{label}").type == pa.float32() and 0 < oracle.min() <= oracle.max() < 1


def test_long_tail_of_users_and_items(small):
    table = _split(small, "train")
    items = np.sort(np.bincount(table.column("item_id").to_numpy()))[::-1]
    users = np.sort(np.bincount(table.column("user_id").to_numpy()))[::-1]
    # The top 1% of items take a large share of the rows while the median item is seen a handful of times.
    assert items[:20].sum() > 0.2 * items.sum() and np.median(items) < 10
    assert users[:10].sum() > 0.05 * users.sum()


def test_split_is_80_10_10_and_written_down(small):
    sizes = {split: _split(small, split).num_rows for split in ("train", "validation", "test")}
    assert sizes == {"train": 16_000, "validation": 2_000, "test": 2_000}
    assert read_manifest(small) == {"rows": ROWS, "seed": 3, "splits": sizes, "spec": read_manifest(small)["spec"]}
    assert (small / MANIFEST).is_file()


def test_same_seed_same_files_other_seed_other_rows(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_small(tmp_path / name, 2_000, seed)
    a, b, c = (_split(tmp_path / name, "test") for name in "abc")
    assert a.equals(b)
    assert not a.equals(c)


def test_command_writes_the_splits(tmp_path, capsys):
    assert main(["data", "generate-small", "--output", str(tmp_path), "--rows", "1000", "--seed", "1"]) == 0
    assert "train: 800 rows" in capsys.readouterr().out
    assert _split(tmp_path, "validation").num_rows == 100


def _bias_only_model(train: pa.Table, label: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Logistic regression on a constant, a per-user and a per-item bias with a N(0, 1) prior on each bias (which
    keeps ids seen a few times near zero), fitted by diagonal Newton steps, one block of parameters at a time."""
    users, items = train.column("user_id").to_numpy(), train.column("item_id").to_numpy()
    y = train.column(label).to_numpy().astype(np.float64)
    user_bias, item_bias = np.zeros(SmallSpec().num_users), np.zeros(SmallSpec().num_items)
    constant = float(np.log(y.mean() / (1 - y.mean())))
    for _ in range(30):
        for bias, ids in ((user_bias, users), (item_bias, items)):
            p = 1 / (1 + np.exp(-(constant + user_bias[users] + item_bias[items])))
            gradient = np.bincount(ids, y - p, len(bias)) - bias
            curvature = np.bincount(ids, p * (1 - p), len(bias)) + 1.0
            bias += gradient / curvature
        p = 1 / (1 + np.exp(-(constant + user_bias[users] + item_bias[items])))
        constant += float(np.sum(y - p) / np.sum(p * (1 - p)))
    return user_bias, item_bias, constant


@pytest.mark.parametrize("label", [label for label, _ in TASK_RATES])
def test_planted_effects_are_learnable(small, label):
    train, test = _split(small, "train"), _split(small, "test")
    y = test.column(label).to_numpy().astype(np.float64)
    assert auc(test.column(f"oracle.{label}").to_numpy(), y) > 0.75
    user_bias, item_bias, constant = _bias_only_model(train, label)
    logits = constant + user_bias[test.column("user_id").to_numpy()] + item_bias[test.column("item_id").to_numpy()]
    p = 1 / (1 + np.exp(-logits))
    assert auc(p, y) > 0.68
    rate = train.column(label).to_numpy().mean()
    assert log_loss(p, y) < log_loss(np.full_like(y, rate), y)
