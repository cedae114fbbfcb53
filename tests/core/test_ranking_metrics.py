"""Per-request NDCG and request AUC on hand-worked requests; gate statistics."""

import math

import numpy as np
import pytest

from core.metrics import auc
from core.ranking_metrics import gate_statistics, ndcg_at_k, ranking_block

L3 = math.log2(3.0)


def _requests():
    """Request 1: scores .9 .5 .1, gains 0 1 2. Request 2: scores .3 .7, gains 1 0. Request 3: no gain (skipped)."""
    scores = np.array([0.9, 0.5, 0.1, 0.3, 0.7, 0.2, 0.4])
    gains = np.array([0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    requests = np.array([1, 1, 1, 2, 2, 3, 3])
    return scores, gains, requests


def test_ndcg_equals_the_hand_worked_values():
    # k=2: request 1 has DCG 0 + 1/log2(3), IDCG 2 + 1/log2(3); request 2 has DCG 0 + 1/log2(3), IDCG 1.
    # k=1: both requests put a zero-gain item first: NDCG 0. k=3: request 1 adds 2/log2(4) = 1 to its DCG.
    got = ndcg_at_k(*_requests(), ks=(1, 2, 3))
    request_1 = (1 / L3) / (2 + 1 / L3)
    request_2 = 1 / L3
    assert got[1] == (0.0, 2)
    assert got[2][0] == pytest.approx((request_1 + request_2) / 2, abs=1e-12) and got[2][1] == 2
    request_1_k3 = (1 / L3 + 1.0) / (2 + 1 / L3)
    assert got[3][0] == pytest.approx((request_1_k3 + request_2) / 2, abs=1e-12)


def test_ndcg_does_not_depend_on_row_order_or_request_id_values():
    scores, gains, requests = _requests()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(scores))
    base = ndcg_at_k(scores, gains, requests, (1, 2, 3))
    shuffled = ndcg_at_k(scores[order], gains[order], requests[order] * 1000 - 7, (1, 2, 3))
    assert {k: v[1] for k, v in shuffled.items()} == {k: v[1] for k, v in base.items()}
    assert [shuffled[k][0] for k in (1, 2, 3)] == pytest.approx([base[k][0] for k in (1, 2, 3)], abs=1e-12)


def test_tied_scores_get_the_mean_discount_of_their_positions():
    # Two items tied at the top, gains 1 and 0: at k=1 the positive is first half the time (NDCG 0.5); at k=2 the
    # expected DCG is (1 + 1/log2(3)) / 2.
    scores, gains, requests = np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.array([7, 7])
    got = ndcg_at_k(scores, gains, requests, (1, 2))
    assert got[1][0] == pytest.approx(0.5)
    assert got[2][0] == pytest.approx((1 + 1 / L3) / 2)
    assert ndcg_at_k(scores, gains[::-1].copy(), requests, (1, 2)) == got


def test_perfect_and_empty():
    scores, gains = np.array([3.0, 2.0, 1.0]), np.array([2.0, 1.0, 0.0])
    assert ndcg_at_k(scores, gains, np.zeros(3, dtype=np.int64), (2,))[2] == (pytest.approx(1.0), 1)
    assert ndcg_at_k(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64), (5,)) == {5: (None, 0)}
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(scores, -gains, np.zeros(3), (2,))
    with pytest.raises(ValueError, match="at least 1"):
        ndcg_at_k(scores, gains, np.zeros(3), (0,))


def test_ranking_block_scores_with_the_weights_and_clips_negative_value():
    # Two tasks, weights (1, -10): a row with task 2's label has value -9 or -10, gain 0.
    p = np.array([[0.9, 0.5], [0.6, 0.0], [0.2, 0.0], [0.8, 0.1], [0.3, 0.2]])
    y = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    w = np.ones_like(p)
    requests = np.array([1, 1, 1, 2, 2])
    block = ranking_block(p, y, w, requests, ["fav", "report"], ks=(1, 3), score_weights=[1.0, -10.0],
                          request_column="request_id")
    # Scores: -4.1, 0.6, 0.2 | -0.2, -1.7. Gains: 0, 1, 0 | 0, 1.
    # Request 1 ranks the positive first (NDCG 1); request 2 ranks it second: 1/log2(3) at k=3, 0 at k=1.
    assert block["requests"] == 2 and block["k"] == [1, 3] and block["request_column"] == "request_id"
    assert block["score"]["ndcg@1"] == pytest.approx(0.5) and block["score"]["requests@1"] == 2
    assert block["score"]["ndcg@3"] == pytest.approx((1 + 1 / L3) / 2)
    fav = block["tasks"]["fav"]
    # fav alone: request 1 order .9 .6 .2 with labels 1 1 0 is ideal; request 2 order .8 .3 with labels 0 1.
    assert fav["ndcg@1"] == pytest.approx(0.5)
    # Request AUC: request 1 AUC 1 (2 pos, 1 neg), request 2 AUC 0; impression-weighted (3 and 2).
    assert fav["request_auc"] == pytest.approx(3 / 5) and fav["request_auc_requests"] == 2
    assert auc(p[:3, 0], y[:3, 0]) == 1.0
    # report: request 1 has one positive (top); request 2 too (ranked .1 vs .2: second).
    assert block["tasks"]["report"]["ndcg@1"] == pytest.approx(0.5)


def test_ranking_block_without_weights_and_padding_rows():
    p = np.array([[0.9], [0.1], [0.5]])
    y = np.array([[0.0], [1.0], [1.0]])
    w = np.array([[1.0], [1.0], [0.0]])  # the last row is padding: left out
    block = ranking_block(p, y, w, np.array([4, 4, 4]), ["fav"], ks=(1,))
    assert block["score"] is None and block["requests"] == 1
    assert block["tasks"]["fav"]["ndcg@1"] == 0.0


def test_gate_statistics():
    # Rows: (1, 0) and (0.5, 0.5): mean (0.75, 0.25); per-row entropies 0 and log 2.
    stats = gate_statistics(np.array([1.5, 0.5]), math.log(2.0), 2)
    assert stats["mean_weights"] == pytest.approx([0.75, 0.25])
    assert stats["entropy_of_mean"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert stats["mean_entropy"] == pytest.approx(math.log(2) / 2)
    assert stats["max_entropy"] == pytest.approx(math.log(2)) and stats["rows"] == 2
    assert gate_statistics(np.zeros(3), 0.0, 0)["mean_weights"] is None
