"""core/sharded_ranking.py in one process: the "ranking" block of core.ranking_metrics.ranking_block, with a
weighted score (on 1, 2 and 3 ranks, requests cut by the rank split: test_sharded_metrics.py's torchrun run)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from core.collective import Collective
from core.ranking_metrics import ranking_block
from core.sharded_ranking import sharded_ranking_block

sys.path.insert(0, str(Path(__file__).parent))
from sharded_metrics_worker import SCORE_WEIGHTS, TASKS, make_data  # noqa: E402
from test_metrics_accumulator import assert_same  # noqa: E402


def test_one_process_sharded_ranking_is_the_gathered_one():
    data = make_data()
    arrays = data["predictions"], data["labels"], data["weights"], data["request_ids"]
    expected = ranking_block(*arrays, TASKS, (1, 3), SCORE_WEIGHTS, "request_id")
    got = sharded_ranking_block(Collective(), *arrays, TASKS, (1, 3), SCORE_WEIGHTS, "request_id")
    assert got["requests"] == 86 and got["score"]["requests@3"] > 0
    assert_same(expected, got)


def test_one_scoring_weight_per_task():
    with pytest.raises(ValueError, match="2 tasks but 1 scoring weights"):
        sharded_ranking_block(Collective(), np.zeros((2, 2), np.float32), np.zeros((2, 2)), np.ones((2, 2)),
                              np.arange(2), ["a", "b"], score_weights=[1.0])
