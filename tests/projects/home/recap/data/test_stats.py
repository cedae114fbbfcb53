"""`recap data stats`: mean/std of sign(x)*log1p(|x|) over finite values, per continuous value."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from projects.home.recap.data.stats import continuous_stats

from .conftest import data_config, write_rows


def test_hand_checked_stats(tmp_path):
    # cont row r = [r, -r, r/2] for r in 0..3; scalar_cont holds NaN and inf, which are left out.
    write_rows(tmp_path / "f.parquet", 0, 4, 2, scalar_cont=pa.array([math.e - 1, np.nan, np.inf, -(math.e - 1)]))
    data = data_config([str(tmp_path)])
    stats = continuous_stats(data, data.train)
    logs = np.log1p(np.arange(4.0))
    half = np.log1p(np.arange(4.0) / 2)
    assert stats["columns"] == ["cont", "scalar_cont"] and stats["widths"] == [3, 1]
    assert stats["count"] == 4 and stats["transform"] == "signed_log1p"
    np.testing.assert_allclose(stats["mean"], [logs.mean(), -logs.mean(), half.mean(), 0.0], atol=1e-6)
    np.testing.assert_allclose(stats["std"], [logs.std(), logs.std(), half.std(), 1.0], atol=1e-6)


def test_constant_value_gets_std_1_and_max_rows(tmp_path):
    write_rows(tmp_path / "f.parquet", 0, 10, 3, scalar_cont=pa.array(np.full(10, 7.0)))
    data = data_config([str(tmp_path)])
    stats = continuous_stats(data, data.train, max_rows=5)
    assert stats["count"] == 5
    assert stats["std"][3] == 1.0 and stats["mean"][3] == pytest.approx(math.log1p(7.0))
    assert stats["mean"][0] == pytest.approx(np.log1p(np.arange(5.0)).mean())


def test_command_writes_json(tmp_path, monkeypatch):
    from pathlib import Path

    from projects.home.recap.data.synthetic import generate
    from projects.home.recap.main import main

    generate(tmp_path / "d", 2_000, rows_per_file=1_000)
    monkeypatch.setenv("RECAP_DATA_DIR", str(tmp_path / "d"))
    demo = Path(__file__).parents[5] / "projects/home/recap/config/demo.yaml"
    assert main(["data", "stats", "--config", str(demo), "--output", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["columns"] == ["recap.continuous"] and len(stats["mean"]) == len(stats["std"]) == 48
    assert stats["count"] == 1_800 and all(s > 0 for s in stats["std"])


def test_boundaries_by_hand(tmp_path):
    # cont slots: r, -r, r/2 for r in 0..9; scalar_cont: seven zeros, a NaN (left out), 1 and 2.
    scalar = pa.array([0.0] * 7 + [np.nan, 1.0, 2.0])
    write_rows(tmp_path / "f.parquet", 0, 10, 4, scalar_cont=scalar)
    data = data_config([str(tmp_path)])
    stats = continuous_stats(data, data.train, max_bins=4)
    assert stats["max_bins"] == 4
    # 10 distinct values, more than max_bins + 1: no point mass (each holds 1/10 <= 1/4), quantiles 0, 1/4, .., 1
    # of 0..9 are 0, 2.25, 4.5, 6.75, 9.
    assert stats["boundaries"][0] == [0.0, 2.25, 4.5, 6.75, 9.0]
    assert stats["boundaries"][1] == [-9.0, -6.75, -4.5, -2.25, 0.0]
    assert stats["boundaries"][2] == [0.0, 1.125, 2.25, 3.375, 4.5]
    # Finite values 0 x7, 1, 2: three distinct values, all of them boundaries.
    assert stats["boundaries"][3] == [0.0, 1.0, 2.0]
    # One bin: the minimum and the maximum.
    assert continuous_stats(data, data.train, max_bins=1)["boundaries"][3] == [0.0, 2.0]


def test_point_mass_is_one_boundary_and_the_rest_get_quantiles(tmp_path):
    # 60 zeros and 1..40: zero holds 60% > 1/4 of the values; the other 4 boundaries are quantiles of 1..40.
    scalar = pa.array(np.concatenate([np.zeros(60), np.arange(1.0, 41.0)]))
    write_rows(tmp_path / "f.parquet", 0, 100, 50, scalar_cont=scalar)
    data = data_config([str(tmp_path)])
    stats = continuous_stats(data, data.train, max_bins=4)
    assert stats["boundaries"][3] == [0.0, 1.0, 14.0, 27.0, 40.0]
    # Sampling (fewer rows than the data) is seeded: the same file twice.
    sampled = [continuous_stats(data, data.train, max_bins=4, quantile_sample_rows=30) for _ in range(2)]
    assert sampled[0]["boundaries"] == sampled[1]["boundaries"] != stats["boundaries"]
    assert sampled[0]["mean"] == stats["mean"]  # the moments always read every row
