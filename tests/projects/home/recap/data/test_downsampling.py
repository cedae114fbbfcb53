"""Downsampling weights and the all-negative downsampling step keep the expected weighted loss unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from projects.home.recap.data.downsampling import downsample_negatives, downsampling_weights


def test_weights_hand_checked():
    labels = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)
    w = downsampling_weights(labels, pos_rates=[1.0, 0.5], neg_rates=[0.1, 0.25], row_weight=np.array([1, 2, 3]))
    np.testing.assert_allclose(w, [[1.0, 4.0], [20.0, 4.0], [30.0, 12.0]])


def test_drop_all_negatives_and_reweight():
    n = 20_000
    rng = np.random.default_rng(0)
    a = (rng.random(n) < 0.05).astype(np.int8)
    b = (rng.random(n) < 0.02).astype(np.int8)
    table = pa.table({"a": a, "b": b, "x": np.arange(n)})
    out = downsample_negatives(table, ["a", "b"], 0.25, np.random.default_rng(1), "weight")
    w = out.column("weight").to_numpy()
    positive = (out.column("a").to_numpy() + out.column("b").to_numpy()) > 0
    assert positive.sum() == ((a + b) > 0).sum()  # every row with a positive is kept ...
    assert (w[positive] == 1.0).all() and (w[~positive] == 4.0).all()  # ... negatives carry 1/keep_rate
    negatives = n - positive.sum()
    assert abs((~positive).sum() - 0.25 * negatives) < 4 * np.sqrt(negatives * 0.25 * 0.75)
    # The weighted count (and so every task's weighted loss, in expectation) matches the original rows.
    assert abs(w.sum() - n) / n < 0.03


def test_existing_weights_are_multiplied():
    table = pa.table({"a": np.array([0, 1, 0], np.int8), "weight": np.array([2.0, 3.0, 5.0])})
    out = downsample_negatives(table, ["a"], 1.0, np.random.default_rng(0), "weight")
    assert out.column("weight").to_pylist() == [2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="keep_rate"):
        downsample_negatives(table, ["a"], 0.0, np.random.default_rng(0), "weight")


def test_command_writes_reweighted_files(tmp_path, monkeypatch, capsys):
    from projects.home.recap.data.synthetic import generate
    from projects.home.recap.main import main

    generate(tmp_path / "d", 3_000, rows_per_file=1_000)
    monkeypatch.setenv("RECAP_DATA_DIR", str(tmp_path / "d"))
    demo = Path(__file__).parents[5] / "projects/home/recap/config/demo.yaml"
    assert main(["data", "downsample", "--config", str(demo), "--output", str(tmp_path / "out"),
                 "--keep-rate", "0.5"]) == 0
    assert "--set data.features.weight=weight" in capsys.readouterr().out
    table = ds.dataset(tmp_path / "out").to_table()
    labels = [c for c in table.column_names if c.startswith("recap.engagement.")]
    assert len(labels) == 10 and table.num_rows < 2_700
    w = table.column("weight").to_numpy()
    any_positive = np.sum([table.column(c).to_numpy() for c in labels], axis=0) > 0
    assert (w[any_positive] == 1).all() and (w[~any_positive] == 2).all()
