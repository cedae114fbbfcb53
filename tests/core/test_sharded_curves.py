"""core/sharded_curves.py in one process: the curves of core.metrics_curves.compute_curves, oracle included (on 1, 2
and 3 ranks: test_sharded_metrics.py's torchrun run)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from core.collective import Collective
from core.metrics_curves import compute_curves
from core.sharded_curves import sharded_curves

sys.path.insert(0, str(Path(__file__).parent))
from sharded_metrics_worker import TASKS, make_data  # noqa: E402
from test_metrics_accumulator import assert_same  # noqa: E402


def test_one_process_sharded_curves_are_the_gathered_ones():
    data = make_data()
    arrays = data["predictions"], data["labels"], data["weights"]
    expected = compute_curves(*arrays, TASKS, data["oracle"], num_points=25)
    assert_same(expected, sharded_curves(Collective(), *arrays, TASKS, data["oracle"], num_points=25))


def test_predictions_and_labels_must_have_one_column_per_task():
    with pytest.raises(ValueError, match=r"must have shape \[N, 1\], got \(2, 1\) and \(3, 1\)"):
        sharded_curves(Collective(), np.zeros((2, 1), np.float32), np.zeros((3, 1)), np.ones((2, 1)), ["a"])
