"""The LightGBM peer's hand-made history aggregates (baselines/history_gbdt.py), checked on a small table by hand."""

import numpy as np
import pyarrow as pa
import pytest

from projects.home.recap.baselines.history_gbdt import DECAY_HOURS, history_aggregates


def test_history_aggregates_count_what_they_say():
    table = pa.table({
        "author_id": pa.array([[7], [9], []], pa.list_(pa.int64())),
        "hashtags": pa.array([[3, 4], [], [5]], pa.list_(pa.int64())),
        "history.author_id": pa.array([[7, 8, 7], [], [1]], pa.list_(pa.int64())),
        "history.hashtag": pa.array([[3, 3, 9], [], [5]], pa.list_(pa.int64())),
        "history.action": pa.array([[0, 1, 2], [], [1]], pa.list_(pa.int64())),
        "history.age_hours": pa.array([[1.0, 5.0, 48.0], [], [2.0]], pa.list_(pa.float32())),
    })
    values, names = history_aggregates(table, num_actions=3)
    f = {name: values[:, i] for i, name in enumerate(names)}
    assert values.shape == (3, len(names))
    np.testing.assert_array_equal(f["history_length"], [3, 0, 1])
    np.testing.assert_array_equal(f["action_1_count"], [1, 0, 1])
    np.testing.assert_allclose(f["action_1_share"], [1 / 3, 0, 1])
    np.testing.assert_allclose(f["mean_age"], [18.0, 0.0, 2.0])
    np.testing.assert_array_equal(f["min_age"], [1.0, -1.0, 2.0])
    # Row 0's candidate author 7 is items 0 (action 0, 1 h) and 2 (action 2, 48 h); row 2 has no candidate author.
    np.testing.assert_array_equal(f["author_matches"], [2, 0, 0])
    np.testing.assert_array_equal(f["author_matches_action_2"], [1, 0, 0])
    np.testing.assert_array_equal(f["author_last_match_age"], [1.0, -1.0, -1.0])
    assert f["author_decayed_matches"][0] == pytest.approx(np.exp(-1 / DECAY_HOURS) + np.exp(-48 / DECAY_HOURS))
    # Hashtags: the candidate's first one (3 in row 0, 5 in row 2).
    np.testing.assert_array_equal(f["hashtag_matches"], [2, 0, 1])
    np.testing.assert_array_equal(f["hashtag_last_match_age"], [1.0, -1.0, 2.0])
