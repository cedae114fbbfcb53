"""Exact curves on hand-checked inputs, and thinning that keeps only points of the exact curve."""

import numpy as np
import pytest

from core.metrics import auc, average_precision
from core.metrics_curves import (
    compute_curves,
    downsample_curve,
    pr_curve,
    reliability_curve,
    roc_curve,
    score_histogram,
)

P = [0.1, 0.4, 0.4, 0.8]
Y = [0, 1, 0, 1]
W = [1, 2, 3, 1]


def test_roc_one_point_per_distinct_score():
    fpr, tpr = roc_curve(P, Y, W)
    # Thresholds 0.8 (+1), 0.4 (+2, -3), 0.1 (-1); positives weigh 3, negatives 4.
    np.testing.assert_allclose(fpr, [0, 0, 3 / 4, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(P, Y, W))


def test_pr_curve_points_and_area_match_average_precision():
    recall, precision = pr_curve(P, Y, W)
    np.testing.assert_allclose(recall, [0, 1 / 3, 1, 1])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 3 / 7])
    # Average precision is the step integral of precision over recall.
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(average_precision(P, Y, W))


def test_single_class_curves_are_none():
    assert roc_curve([0.1, 0.2], [0, 0]) is None
    assert pr_curve([0.1, 0.2], [0, 0]) is None
    assert roc_curve([], []) is None and reliability_curve([], []) is None and score_histogram([], []) is None


def test_reliability_bins_hold_equal_weight():
    p = np.arange(1, 9) / 10  # 0.1 .. 0.8
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    rel = reliability_curve(p, y, None, num_bins=4)
    np.testing.assert_allclose(rel["weight"], [2, 2, 2, 2])
    np.testing.assert_allclose(rel["mean_prediction"], [0.15, 0.35, 0.55, 0.75])
    np.testing.assert_allclose(rel["observed_rate"], [0, 0.5, 0.5, 1])


def test_histograms_sum_to_one_per_class():
    hist = score_histogram([0.0, 0.5, 1.0, 1.0], [0, 1, 1, 0], [1, 1, 1, 3], num_bins=2)
    np.testing.assert_allclose(hist["edges"], [0, 0.5, 1])
    np.testing.assert_allclose(hist["positive"], [0, 1])
    np.testing.assert_allclose(hist["negative"], [0.25, 0.75])


def test_downsample_keeps_endpoints_and_only_exact_points():
    rng = np.random.default_rng(1)
    p, y = rng.uniform(size=5000), rng.integers(0, 2, 5000)
    fpr, tpr = roc_curve(p, y)
    x, z = downsample_curve(fpr, tpr, 50)
    assert 2 < len(x) <= 50
    assert (x[0], z[0]) == (0.0, 0.0) and (x[-1], z[-1]) == (1.0, 1.0)
    exact = set(zip(fpr.tolist(), tpr.tolist()))
    assert all(pt in exact for pt in zip(x.tolist(), z.tolist()))
    assert np.all(np.diff(x) >= 0)
    short_x, short_y = downsample_curve([0, 1], [0, 1], 50)
    assert list(short_x) == [0, 1]


def test_compute_curves_per_task_with_oracle():
    preds = np.array([[0.1, 0.2], [0.4, 0.2], [0.4, 0.2], [0.8, 0.2]])
    labels = np.array([[0, 0], [1, 0], [0, 0], [1, 0]], dtype=float)
    out = compute_curves(preds, labels, None, ["a", "b"], oracle=preds, num_points=10)
    assert out["a"]["roc"]["fpr"][0] == 0.0 and out["a"]["oracle"]["pr"] is not None
    assert out["b"]["roc"] is None and out["b"]["pr"] is None and out["b"]["histogram"] is not None
