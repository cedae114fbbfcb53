"""core/metrics_block.py: a task's block completed from its values, with the notes that say which metrics are
undefined and why (the gather and sharded paths giving the same blocks: test_sharded_metrics.py)."""

import math

import pytest

from core.metrics import METRIC_KEYS
from core.metrics_block import baseline_entropy, finish_block, no_rows_block


def _block(positives: float, total: float, logloss: float) -> dict:
    out = dict.fromkeys(METRIC_KEYS)
    out.update(count=total, rows=4, pos_rate=positives / total, logloss=logloss)
    return out


def _not_asked() -> float:
    raise AssertionError("the normalized log loss is asked for only where nrce is defined")


def test_rce_and_nrce_against_the_baseline_entropy():
    baseline = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert baseline_entropy(0.25) == pytest.approx(baseline)
    block = finish_block(_block(1.0, 4.0, baseline / 2), [], 1.0, 4.0, 0.3, lambda: baseline / 4, None)
    assert (block["rce"], block["nrce"], block["notes"]) == (pytest.approx(50.0), pytest.approx(75.0), [])
    assert "group_auc" not in block


def test_single_class_and_zero_predictions_are_noted():
    no_positives = finish_block(_block(0.0, 4.0, 0.1), ["earlier note"], 0.0, 4.0, 0.2, _not_asked, None)
    assert no_positives["rce"] is None and no_positives["nrce"] is None
    assert no_positives["notes"] == ["earlier note",
                                     "no positive labels: auc, rce, nrce, pr_auc and calibration are undefined"]
    no_negatives = finish_block(_block(4.0, 4.0, 0.1), [], 4.0, 4.0, 0.2, _not_asked, None)
    assert no_negatives["notes"] == ["no negative labels: auc, rce and nrce are undefined"]
    zero = finish_block(_block(1.0, 4.0, 0.5), [], 1.0, 4.0, 0.0, _not_asked, None)
    assert zero["rce"] is not None and zero["nrce"] is None
    assert zero["notes"] == ["every prediction is 0: nrce is undefined"]


def test_group_auc_and_non_finite_values():
    block = finish_block(_block(1.0, 4.0, math.inf), [], 1.0, 4.0, 0.3, lambda: 0.5, (None, 0))
    assert (block["group_auc"], block["group_auc_groups"]) == (None, 0)
    assert block["logloss"] is None and block["rce"] is None
    assert block["notes"] == ["no group holds both classes: group_auc is undefined",
                              "rce was not finite and is reported as null",
                              "logloss was not finite and is reported as null"]
    grouped = finish_block(_block(1.0, 4.0, 0.5), [], 1.0, 4.0, 0.3, lambda: 0.5, (0.75, 3))
    assert (grouped["group_auc"], grouped["group_auc_groups"], grouped["notes"]) == (0.75, 3, [])


def test_a_block_without_rows():
    out = dict.fromkeys(METRIC_KEYS)
    assert no_rows_block(out, ["2 row(s) left out"], grouped=True) == {
        **dict.fromkeys(METRIC_KEYS), "group_auc": None, "group_auc_groups": 0,
        "notes": ["2 row(s) left out", "no rows with positive weight: every metric is undefined"]}
    assert "group_auc" not in no_rows_block(dict.fromkeys(METRIC_KEYS), [], grouped=False)
