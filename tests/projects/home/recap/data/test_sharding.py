"""The split of an epoch across ranks, workers and fills, on hand-checked counts."""

from __future__ import annotations

import numpy as np

from projects.home.recap.data import sharding


def test_train_ranks_get_equal_whole_batches():
    # 100 rows, 2 ranks, batches of 8: 6 batches each (96 rows), 4 rows dropped.
    assert sharding.rank_range(100, 0, 2, 8, drop_last=True) == (0, 48)
    assert sharding.rank_range(100, 1, 2, 8, drop_last=True) == (48, 96)
    assert sharding.train_batches_per_rank(100, 2, 8) == 6


def test_eval_ranks_split_every_row():
    assert [sharding.rank_range(101, r, 2, 8, drop_last=False) for r in range(2)] == [(0, 50), (50, 101)]


def test_workers_take_whole_batches_first_ones_one_more():
    # 90 rows = 12 batches (the last of 2 rows) over 5 workers: 3, 3, 2, 2, 2 batches.
    ranges = [sharding.worker_range(0, 90, 8, False, 5, k) for k in range(5)]
    assert ranges == [(0, 24, 3), (24, 48, 3), (48, 64, 2), (64, 80, 2), (80, 90, 2)]


def test_spans_cut_row_groups():
    rows = np.array([10, 7, 33])
    order = np.array([2, 0, 1])  # row groups of 33, 10 and 7 rows in this epoch
    spans = sharding.spans(rows[order], order, 30, 45)
    assert spans == [sharding.Span(2, 30, 33), sharding.Span(0, 0, 10), sharding.Span(1, 0, 2)]


def test_resume_points_replay_round_robin():
    # Worker 0 has fills of 4, 4, 1 batches; worker 1 of 4, 2. Order: w0f0 w1f0 w0f1 w1f1 w0f2.
    per_fill = [[4, 4, 1], [4, 2]]
    assert sharding.resume_points(per_fill, 0) == [(0, 0), (0, 0)]
    assert sharding.resume_points(per_fill, 3) == [(0, 3), (0, 0)]
    assert sharding.resume_points(per_fill, 6) == [(1, 0), (0, 2)]
    assert sharding.resume_points(per_fill, 13) == [(2, 0), (1, 1)]
    assert sharding.resume_points(per_fill, 15) == [(3, 0), (2, 0)]


def test_unit_order_is_seeded_per_epoch():
    a = sharding.unit_order(50, True, 0, 0)
    assert sorted(a.tolist()) == list(range(50))
    assert (a == sharding.unit_order(50, True, 0, 0)).all() and (a != sharding.unit_order(50, True, 0, 1)).any()
    assert sharding.unit_order(5, False, 0, 3).tolist() == [0, 1, 2, 3, 4]
