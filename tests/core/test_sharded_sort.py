"""core/sharded_sort.py in one process: sort keys in score order, tie blocks merged and scanned per segment, and
the owner of an id (the placement across ranks is checked by test_sharded_metrics.py's torchrun run)."""

import numpy as np

from core.collective import Collective
from core.sharded_sort import _owner, key_scores, score_keys, segment_scans, sort_blocks


def test_score_keys_order_like_scores_within_segments():
    scores = np.array([0.0, -0.0, 1e-30, 0.25, 0.5, 1.0], dtype=np.float32)
    keys = score_keys(scores, np.array([0, 0, 0, 1, 1, 1]))
    assert np.all(np.diff(keys[:1]) >= 0) and keys[0] == keys[1]  # -0.0 and 0.0 are one score
    assert np.all(np.diff(keys[1:]) > 0)
    assert np.array_equal(key_scores(keys), scores.astype(np.float64) + 0.0)
    mixed = score_keys(np.array([0.9, 0.1], dtype=np.float32), np.array([0, 1]))
    assert mixed[0] < mixed[1]  # the segment comes first


def test_one_process_sort_and_scans():
    comm = Collective()
    keys, values = sort_blocks(comm, np.array([5, 3, 5, 9, 3, 3]), np.arange(12.0).reshape(6, 2))
    assert keys.tolist() == [3, 5, 9]
    assert values.tolist() == [[2 + 8 + 10, 3 + 9 + 11], [0 + 4, 1 + 5], [6, 7]]
    below, from_top = segment_scans(comm, np.array([0, 0, 1, 1, 1]), np.ones((5, 1)))
    assert below[:, 0].tolist() == [0, 1, 0, 1, 2] and from_top[:, 0].tolist() == [2, 1, 3, 2, 1]


def test_owner_spreads_ids_and_is_stable():
    ids = np.arange(10_000, dtype=np.int64) * 1000 + 3
    owners = _owner(ids, 3)
    assert set(np.unique(owners).tolist()) == {0, 1, 2}
    assert np.bincount(owners).min() > 3000
    assert np.array_equal(owners, _owner(ids.copy(), 3))
