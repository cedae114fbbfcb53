"""The synthetic generator: the demo schema, determinism, realistic rates and a learnable, known signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from projects.home.recap.data.loader import RecapDataLoader, validate_dataset
from projects.home.recap.data.synthetic import (
    LABEL_PREFIX,
    ORACLE_PREFIX,
    TASK_RATES,
    generate,
)
from projects.home.recap.main import main
from projects.home.recap.schema import load_recap_config

DEMO = Path(__file__).parents[5] / "projects/home/recap/config/demo.yaml"


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Average rank within runs of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auc_helper_on_hand_checked_input():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    sizes = generate(out, 40_000, seed=3, rows_per_file=9_000, row_group_size=4_000)
    return out, sizes


def test_writes_the_demo_schema_in_three_splits(generated, monkeypatch):
    out, sizes = generated
    assert sizes == {"train": 36_000, "validation": 2_000, "test": 2_000}
    assert len(list((out / "train").glob("*.parquet"))) == 4
    monkeypatch.setenv("RECAP_DATA_DIR", str(out))
    config = load_recap_config(DEMO)
    tasks = list(config.model.tasks)
    for dataset in [config.data.train, *config.data.validation.values()]:
        validate_dataset(config.data, dataset, tasks)
    schema = ds.dataset(out / "test").schema
    for task in config.data.tasks.values():
        assert schema.field(ORACLE_PREFIX + task.label).type == "float"
    batch = next(iter(RecapDataLoader(config.data, config.data.validation["test"], tasks, "eval", batch_size=256)))
    assert batch.continuous.shape == (256, 48) and batch.binary.shape == (256, 16)
    assert batch.embeddings.shape == (256, 80) and batch.labels.shape == (256, 10)
    lows = {"client_id": 16, "author_type": 8, "hour_of_day": 24, "position": 32}
    for j, (name, size) in enumerate(lows.items()):
        assert 0 <= batch.discrete[:, j].min() and batch.discrete[:, j].max() < size, name
    ids = batch.sparse.to_dict()
    assert (ids["user_id"].lengths() == 1).all() and (ids["author_id"].lengths() == 1).all()
    assert ids["hashtags"].lengths().min() == 0 and ids["hashtags"].lengths().max() > 1
    assert ids["user_id"].values().max() > 100_000  # raw ids, larger than the demo's tables


def test_labels_rates_and_oracle_auc(generated):
    out, _ = generated
    table = ds.dataset(out / "train").to_table()
    for task, rate in TASK_RATES:
        y = table.column(LABEL_PREFIX + task).to_numpy()
        p = table.column(ORACLE_PREFIX + LABEL_PREFIX + task).to_numpy()
        assert set(np.unique(y)) <= {0, 1}
        assert abs(p.mean() - rate) < 0.25 * rate, task  # the ground truth is calibrated to the target rate
        if y.sum() >= 40:  # enough positives for a stable AUC
            assert auc(y, p) > 0.7, task


def test_heavy_tails_missing_values_and_position_effect(generated):
    out, _ = generated
    table = ds.dataset(out / "train").to_table()
    x = table.column("recap.continuous").combine_chunks().flatten().to_numpy().reshape(-1, 48)
    assert np.isnan(x).any() and np.isinf(x).any()
    finite = np.abs(x[np.isfinite(x)])
    assert np.percentile(finite, 99.9) > 500 * np.median(finite)  # log-normalization matters
    pos = table.column("position").to_numpy()
    p = table.column(ORACLE_PREFIX + LABEL_PREFIX + "is_good_clicked").to_numpy()
    assert p[pos < 4].mean() > 1.5 * p[pos >= 28].mean()


def test_deterministic_for_a_seed(tmp_path):
    def files(seed, name):
        generate(tmp_path / name, 3_000, seed=seed, rows_per_file=1_000)
        return [p.read_bytes() for split in ("train", "validation", "test")
                for p in sorted((tmp_path / name / split).glob("*.parquet"))]

    first = files(5, "a")
    assert len(first) == 5  # 3 train files, one validation, one test
    assert first == files(5, "b")
    assert all(x != y for x, y in zip(first, files(6, "c")))


def test_command_writes_splits(tmp_path, capsys):
    assert main(["data", "generate", "--output", str(tmp_path), "--rows", "2000", "--processes", "2",
                 "--rows-per-file", "500"]) == 0
    assert "rows/s" in capsys.readouterr().out
    rows = sum(ds.dataset(tmp_path / s).count_rows() for s in ("train", "validation", "test"))
    assert rows == 2000
