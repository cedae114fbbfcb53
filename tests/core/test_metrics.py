"""Exact metrics on small hand-checked inputs: AUC with ties and weights, RCE, NRCE, PR-AUC, calibration,
grouped AUC, strata, oracle, and the flagged (never NaN) values of empty and single-class inputs."""

import json
import math

import numpy as np
import pytest

from core.metrics import (
    EPSILON,
    METRIC_KEYS,
    auc,
    average_precision,
    binary_metrics,
    calibration_ratio,
    compute_metrics,
    grouped_auc,
    log_loss,
    metrics_document,
    nrce,
    rce,
)

# Positives score 0.4 (w=2) and 0.8 (w=1); negatives 0.1 (w=1) and 0.4 (w=3): one tied pair.
P = [0.1, 0.4, 0.4, 0.8]
Y = [0, 1, 0, 1]
W = [1, 2, 3, 1]


def test_auc_counts_ties_half_and_weights_pairs():
    # Weighted pairs: 0.4+ beats 0.1- (2*1), ties 0.4- (0.5*2*3), 0.8+ beats both (1*1 + 1*3): 9 of 3*4.
    assert auc(P, Y, W) == pytest.approx(9 / 12)
    # Unweighted: wins 1 + tie 0.5 + 2 = 3.5 of 2*2.
    assert auc(P, Y) == pytest.approx(3.5 / 4)


def test_auc_does_not_depend_on_row_order_and_matches_pair_count():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 60) / 4  # many ties
    y = rng.integers(0, 2, 60).astype(float)
    w = rng.uniform(0.5, 2.0, 60)
    pos, neg = y == 1, y == 0
    diff = p[pos][:, None] - p[neg][None, :]
    pair_w = w[pos][:, None] * w[neg][None, :]
    brute = np.sum(pair_w * ((diff > 0) + 0.5 * (diff == 0))) / pair_w.sum()
    assert auc(p, y, w) == pytest.approx(brute, rel=1e-12)
    perm = rng.permutation(60)
    assert auc(p[perm], y[perm], w[perm]) == pytest.approx(brute, rel=1e-12)


def test_average_precision_one_threshold_per_distinct_score():
    # Thresholds 0.8: P=1, R=1/3; 0.4: TP=3, FP=3, P=1/2, R=1; 0.1 adds no recall.
    assert average_precision(P, Y, W) == pytest.approx(1 / 3 * 1 + 2 / 3 * 0.5)
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)


def test_rce_hand_value_and_constant_baseline_is_zero():
    # LL = -log 0.8, baseline = log 2: RCE = 100 * (1 + log2(0.8)).
    assert rce([0.8, 0.2], [1, 0]) == pytest.approx(100 * (1 + math.log2(0.8)))
    assert rce([0.8, 0.2], [1, 0]) == pytest.approx(67.80719051, abs=1e-6)
    # Predicting the weighted mean label everywhere is the baseline itself.
    assert rce([3 / 7] * 4, Y, W) == pytest.approx(0.0, abs=1e-12)
    assert log_loss([0.8, 0.2], [1, 0]) == pytest.approx(-math.log(0.8))


def test_nrce_rescales_to_the_mean_label_first():
    # p = [0.8, 0.4], mean 0.6, mean label 0.5: rescaled p = [2/3, 1/3], LL = log 1.5.
    assert nrce([0.8, 0.4], [1, 0]) == pytest.approx(100 * (1 - math.log(1.5) / math.log(2)))
    assert rce([0.8, 0.4], [1, 0]) == pytest.approx(100 * (1 - (-math.log(0.8) - math.log(0.6)) / 2 / math.log(2)))
    # Any constant prediction rescales to the mean label: NRCE 0 even though RCE is negative.
    assert nrce([0.9] * 4, Y, W) == pytest.approx(0.0, abs=1e-12)
    assert rce([0.9] * 4, Y, W) < 0


def test_nrce_clips_rescaled_predictions_into_the_unit_interval():
    p, y = [0.9, 0.1, 0.1], [1, 1, 0]
    scaled = np.clip(np.array(p) * (2 / 3) / (1.1 / 3), EPSILON, 1 - EPSILON)  # 0.9 becomes 1.64 before clipping
    expected_ll = -(math.log(scaled[0]) + math.log(scaled[1]) + math.log(1 - scaled[2])) / 3
    baseline = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nrce(p, y) == pytest.approx(100 * (1 - expected_ll / baseline))


def test_calibration_pos_rate_count_weighted():
    m = binary_metrics(P, Y, W)
    assert m["calibration"] == pytest.approx((0.1 + 0.8 + 1.2 + 0.8) / 3)
    assert calibration_ratio(P, Y, W) == pytest.approx(2.9 / 3)
    assert m["pos_rate"] == pytest.approx(3 / 7)
    assert m["count"] == pytest.approx(7.0) and m["rows"] == 4
    assert m["auc"] == pytest.approx(0.75) and m["pr_auc"] == pytest.approx(2 / 3)
    assert m["notes"] == []


def test_grouped_auc_weighted_mean_skipping_single_class_groups():
    # Group 7: scores .2-, .6+, .6- (AUC 0.75, 3 rows); group 3: .3+, .1- (AUC 1, 2 rows); group 5: one positive.
    g = [7, 3, 7, 5, 3, 7]
    p = [0.2, 0.3, 0.6, 0.5, 0.1, 0.6]
    y = [0, 1, 1, 1, 0, 0]
    value, groups = grouped_auc(p, y, None, g)
    assert value == pytest.approx((3 * 0.75 + 2 * 1.0) / 5) and groups == 2
    # Weights: group 7 weighs 4 (tied negative w=2, AUC (1 + 0.5*2) / 3), group 3 weighs 2.
    value, _ = grouped_auc(p, y, [1, 1, 1, 1, 1, 2], g)
    assert value == pytest.approx((4 * (2 / 3) + 2 * 1.0) / 6)
    assert binary_metrics(p, y, None, g)["group_auc_groups"] == 2


def test_grouped_auc_none_when_no_group_has_both_classes():
    value, groups = grouped_auc([0.1, 0.2], [1, 0], None, [1, 2])
    assert value is None and groups == 0
    m = binary_metrics([0.1, 0.2], [1, 0], None, [1, 2])
    assert m["group_auc"] is None and any("group_auc" in n for n in m["notes"])


def test_empty_input_gives_nulls_with_a_note():
    m = binary_metrics([], [], [])
    assert all(m[k] is None for k in METRIC_KEYS if k != "count")
    assert m["count"] == 0.0 and m["rows"] == 0 and m["notes"]
    json.dumps(m, allow_nan=False)


def test_single_class_task_flags_undefined_metrics():
    m = binary_metrics([0.2, 0.3], [0, 0])
    assert m["auc"] is None and m["rce"] is None and m["nrce"] is None
    assert m["pr_auc"] is None and m["calibration"] is None
    assert m["logloss"] == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert m["pos_rate"] == 0.0 and any("no positive labels" in n for n in m["notes"])
    m = binary_metrics([0.2, 0.3], [1, 1])
    assert m["auc"] is None and m["rce"] is None and m["pr_auc"] == pytest.approx(1.0)
    assert any("no negative labels" in n for n in m["notes"])
    json.dumps(m, allow_nan=False)


def test_non_finite_and_zero_weight_rows_are_left_out():
    m = binary_metrics([0.1, np.nan, 0.4, 0.4, 0.8, 0.3], [0, 1, 1, 0, 1, 1], [1, 1, 2, 3, 1, 0])
    assert m["auc"] == pytest.approx(0.75) and m["rows"] == 4
    assert any("non-finite" in n for n in m["notes"])


def test_bad_ranges_are_errors_naming_the_task():
    with pytest.raises(ValueError, match="probabilities"):
        binary_metrics([1.5], [1])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        binary_metrics([0.5], [1], [-1])
    with pytest.raises(ValueError, match="task 'like'.*labels"):
        compute_metrics(np.array([[0.5]]), np.array([[2.0]]), None, ["like"])


def test_compute_metrics_tasks_oracle_and_strata():
    preds = np.array([[0.1, 0.5], [0.4, 0.5], [0.4, 0.5], [0.8, 0.5], [0.3, 0.5], [0.7, 0.5]])
    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [1, 1], [0, 0]], dtype=float)
    weights = np.array([[1, 1], [2, 1], [3, 1], [1, 1], [1, 1], [1, 1]], dtype=float)
    strat = np.array([[0], [0], [0], [0], [1], [1]])
    oracle = np.where(labels == 1, 0.9, 0.1)
    tasks = compute_metrics(preds, labels, weights, ["fav", "reply"], strat, ["client"], None, oracle)
    assert set(tasks) == {"fav", "reply"}
    # Stratum 0 of "fav" is the hand-checked example above; stratum 1 ranks its negative above its positive.
    s0, s1 = tasks["fav"]["strata"]["client"]["0"], tasks["fav"]["strata"]["client"]["1"]
    assert s0["auc"] == pytest.approx(0.75) and s0["count"] == pytest.approx(7)
    assert s1["auc"] == pytest.approx(0.0) and s1["rows"] == 2
    assert tasks["fav"]["auc"] == pytest.approx(auc(preds[:, 0], labels[:, 0], weights[:, 0]))
    # A constant prediction has AUC 1/2; the oracle separates the classes perfectly.
    assert tasks["reply"]["auc"] == pytest.approx(0.5)
    assert tasks["reply"]["oracle"]["auc"] == pytest.approx(1.0)
    assert tasks["reply"]["oracle"]["rce"] > tasks["reply"]["rce"]
    assert "oracle" in s0 and "strata" not in tasks["fav"]["oracle"]
    doc = metrics_document(tasks, "test", 12, "ckpt/12", ["client"])
    assert doc["dataset"] == "test" and doc["step"] == 12 and doc["stratifiers"] == ["client"]
    json.dumps(doc, allow_nan=False)


def test_compute_metrics_checks_shapes():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        compute_metrics(np.zeros((3, 1)), np.zeros((3, 1)), None, ["a", "b"])
    with pytest.raises(ValueError, match="stratifiers must have shape"):
        compute_metrics(np.zeros((3, 1)), np.zeros((3, 1)), None, ["a"], np.zeros((3, 2)), ["s"])
