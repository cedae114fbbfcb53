"""The generator's engagement history: off by default (today's data unchanged), well-formed list columns when on
(one history per request, most recent first, ids in the candidate columns' id spaces), and a planted effect that
the oracle needs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from projects.home.recap.data.synthetic import (
    CONTINUOUS,
    HISTORY_COLUMNS,
    HISTORY_LOADINGS,
    LABEL_PREFIX,
    LOADINGS,
    NUM_ACTIONS,
    ORACLE_PREFIX,
    TASK_RATES,
    SyntheticSpec,
    generate,
    generate_table,
    make_world,
)
from projects.home.recap.data.synthetic.sampling import _rng
from projects.home.recap.main import main

LENGTH = 16
ON = SyntheticSpec(history_length=LENGTH)
ROWS = 50_000
SMALL = SyntheticSpec(num_users=2_000, num_authors=500, num_hashtags=300, history_length=6)


def oracle(table: pa.Table, task: str) -> np.ndarray:
    return table.column(ORACLE_PREFIX + LABEL_PREFIX + task).to_numpy().astype(np.float64)


def lists(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column's per-row lengths and flat values."""
    column = table.column(name).combine_chunks()
    return np.diff(np.asarray(column.offsets)), column.flatten().to_numpy()


def candidate_author_in_history(table: pa.Table) -> np.ndarray:
    """Per row, whether its candidate's author is among its history's authors."""
    lengths, authors = lists(table, "history.author_id")
    row = np.repeat(np.arange(len(lengths)), lengths)
    candidate = table.column("author_id").combine_chunks().flatten().to_numpy()
    found = np.zeros(len(lengths), dtype=bool)
    found[row[authors == candidate[row]]] = True
    return found


@pytest.fixture(scope="module")
def tables():
    """The same 50,000 rows (seed 5) from the world with history and from that world with the term zeroed."""
    on = generate_table(make_world(ON, 5), _rng(5, 8), ROWS, 0)
    zeroed = generate_table(make_world(replace(ON, history_strength=0.0), 5), _rng(5, 8), ROWS, 0)
    return on, zeroed


def test_off_by_default_and_without_a_length_strength_changes_nothing(tmp_path):
    assert SyntheticSpec().history_length == 0
    world = make_world(SyntheticSpec(), 3)
    assert world.interests is None
    table = generate_table(world, _rng(3, 3, 0, 0), 500, 0)
    assert not [c for c in table.column_names if c.startswith("history")]

    def files(name, spec):
        generate(tmp_path / name, 2_000, seed=2, spec=spec, rows_per_file=1_000)
        return [p.read_bytes() for p in sorted((tmp_path / name).rglob("*.parquet"))]

    assert files("default", SyntheticSpec()) == files("strength", SyntheticSpec(history_strength=4.0))


def test_history_draws_nothing_from_the_row_stream():
    # With no matching and no effect, the history only adds its columns: every other column, the oracle included,
    # is exactly the data without history.
    off = generate_table(make_world(replace(SMALL, history_length=0), 4), _rng(4, 1), 3_000, 0)
    quiet = replace(SMALL, history_strength=0.0, history_match_rate=0.0)
    on = generate_table(make_world(quiet, 4), _rng(4, 1), 3_000, 0)
    assert on.column_names == off.column_names[:11] + list(HISTORY_COLUMNS) + off.column_names[11:]
    # recap.continuous holds NaNs, which compare unequal: compared as arrays with equal_nan.
    assert on.drop_columns([*HISTORY_COLUMNS, CONTINUOUS]).equals(off.drop_columns([CONTINUOUS]))
    assert np.array_equal(*(t.column(CONTINUOUS).combine_chunks().flatten().to_numpy() for t in (on, off)),
                          equal_nan=True)


def test_spec_and_loadings_validation():
    with pytest.raises(ValueError, match="history_length"):
        SyntheticSpec(history_length=-1)
    with pytest.raises(ValueError, match="history_strength"):
        SyntheticSpec(history_length=4, history_strength=float("nan"))
    with pytest.raises(ValueError, match="history_match_rate"):
        SyntheticSpec(history_match_rate=1.5)
    assert set(HISTORY_LOADINGS) == set(LOADINGS)
    assert HISTORY_LOADINGS["is_negative_feedback"] < 0 and HISTORY_LOADINGS["is_report_tweet_clicked"] < 0


def test_columns_types_and_lengths(tables):
    table, _ = tables
    types = {"history.author_id": pa.int64(), "history.hashtag": pa.int64(), "history.action": pa.int64(),
             "history.age_hours": pa.float32()}
    for name, kind in types.items():
        field = table.schema.field(name)
        assert field.type == pa.list_(pa.field("item", kind, nullable=False)) and not field.nullable, name
    lengths = lists(table, HISTORY_COLUMNS[0])[0]
    for name in HISTORY_COLUMNS[1:]:
        assert np.array_equal(lists(table, name)[0], lengths), name
    assert lengths.min() == 0 and lengths.max() == LENGTH and (lengths <= LENGTH).all()
    assert 0.3 * LENGTH < lengths.mean() < 0.7 * LENGTH  # around L/2, many short histories, some capped


def test_ids_actions_and_ages(tables):
    table, _ = tables
    world = make_world(replace(ON, history_length=0), 5)  # the id spaces do not depend on the history
    _, authors = lists(table, "history.author_id")
    _, hashtags = lists(table, "history.hashtag")
    assert np.isin(authors, world.authors.raw_id(np.arange(ON.num_authors))).all()
    assert np.isin(hashtags, world.hashtags.raw_id(np.arange(ON.num_hashtags))).all()
    _, actions = lists(table, "history.action")
    assert actions.min() == 0 and actions.max() == NUM_ACTIONS - 1
    lengths, ages = lists(table, "history.age_hours")
    assert (ages >= 0).all() and np.isfinite(ages).all()
    row = np.repeat(np.arange(len(lengths)), lengths)
    same_row = row[1:] == row[:-1]
    assert (np.diff(ages)[same_row] >= 0).all()  # most recent first
    assert 2.0 < ages[np.r_[0, np.flatnonzero(~same_row) + 1]].mean() < 8.0  # the latest: hours ago


def test_one_history_per_request(tables):
    table, _ = tables
    head = table.slice(0, 4_000)
    requests = head.column("request_id").to_numpy()
    assert len(np.unique(requests)) == 500
    for name in HISTORY_COLUMNS:
        values = head.column(name).to_pylist()
        first = {}
        for request, value in zip(requests, values):
            assert first.setdefault(request, value) == value, name
    # Different requests (other users, or the same user at other times) have different histories.
    histories = {tuple(v) for v in head.column("history.author_id").to_pylist() if v}
    assert len(histories) > 300


def test_deterministic_for_a_seed(tmp_path):
    def files(name, seed):
        generate(tmp_path / name, 1_500, seed=seed, spec=SMALL, rows_per_file=500)
        return [p.read_bytes() for p in sorted((tmp_path / name).rglob("*.parquet"))]

    first = files("a", 1)
    assert first == files("b", 1)
    assert all(x != y for x, y in zip(first, files("c", 2)))


def test_rates_hold_with_history(tables):
    table, _ = tables
    for task, rate in TASK_RATES:
        assert abs(oracle(table, task).mean() - rate) < 0.2 * rate, task
        assert abs(table.column(LABEL_PREFIX + task).to_numpy().mean() - rate) < 0.3 * rate + 0.0005, task


def test_candidates_match_their_history(tables):
    table, zeroed = tables
    found = candidate_author_in_history(table)
    has_history = lists(table, "history.author_id")[0] > 0
    # A third of the rows with a history draw their author from it (p_match 0.35), plus chance matches.
    assert 0.3 < found[has_history].mean() < 0.6
    assert np.array_equal(found, candidate_author_in_history(zeroed))  # the strength moves no draw


def test_the_planted_effect_moves_the_oracle(tables):
    table, zeroed = tables
    found = candidate_author_in_history(table)
    for task, _ in TASK_RATES:
        logit, logit_zeroed = (np.log(p / (1 - p)) for p in (oracle(table, task), oracle(zeroed, task)))
        # Rows whose candidate's author is in the history: higher oracle logits for engagements, lower for negative
        # feedback; without the term the same rows are no better than the others.
        gap = logit[found].mean() - logit[~found].mean()
        gap_zeroed = logit_zeroed[found].mean() - logit_zeroed[~found].mean()
        loading = HISTORY_LOADINGS[task]
        assert np.sign(gap) == np.sign(loading) and abs(gap) > 0.6 * abs(loading), (task, gap)
        assert (gap - gap_zeroed) * np.sign(loading) > 0.6 * abs(loading), (task, gap, gap_zeroed)


def test_the_oracle_needs_the_history(tables):
    table, zeroed = tables

    def expected_rce(truth: np.ndarray, prediction: np.ndarray) -> float:
        """RCE of a prediction in expectation over labels drawn from the truth (no label noise)."""
        def entropy(q):
            return -(truth * np.log(q) + (1 - truth) * np.log(1 - q)).mean()

        return 100 * (1 - entropy(prediction) / entropy(np.full_like(truth, truth.mean())))

    # The zeroed world's biases are solved without the term: its oracle is the best calibrated guess of a model that
    # sees everything but the history.
    gains = {task: expected_rce(oracle(table, task), oracle(table, task))
             - expected_rce(oracle(table, task), oracle(zeroed, task)) for task, _ in TASK_RATES}
    assert all(g > 0 for g in gains.values()), gains
    for task in ("is_favorited", "is_retweeted", "is_replied", "is_shared", "is_profile_clicked"):
        assert gains[task] > 2.0, gains


def test_command_writes_history(tmp_path):
    assert main(["data", "generate", "--output", str(tmp_path), "--rows", "2000", "--history-length", "8",
                 "--history-strength", "2", "--processes", "1"]) == 0
    table = ds.dataset(tmp_path / "train").to_table()
    assert set(HISTORY_COLUMNS) <= set(table.column_names)
    assert lists(table, "history.action")[0].max() <= 8
    for bad in (["--history-length", "-1"], ["--history-length", "4", "--history-strength", "inf"]):
        with pytest.raises(SystemExit, match="history"):
            main(["data", "generate", "--output", str(tmp_path), *bad])


def test_ratings_follow_the_taste_and_their_sign_moves_the_oracle():
    """history_ratings: history.action holds ratings 0..4; a candidate whose author the user rated low (0 or 1) gets
    a lower oracle logit than one whose author they rated high (3 or 4), for an engagement task."""
    spec = replace(ON, history_ratings=True)
    table = generate_table(make_world(spec, 5), _rng(5, 8), ROWS, 0)
    lengths, ratings = lists(table, "history.action")
    counts = np.bincount(ratings, minlength=5)
    assert ratings.min() == 0 and ratings.max() == 4 and (counts > 0.05 * len(ratings)).all()
    _, authors = lists(table, "history.author_id")
    row = np.repeat(np.arange(len(lengths)), lengths)
    candidate = table.column("author_id").combine_chunks().flatten().to_numpy()
    same = authors == candidate[row]
    low, high = np.zeros(len(lengths), bool), np.zeros(len(lengths), bool)
    low[row[same & (ratings <= 1)]] = True
    high[row[same & (ratings >= 3)]] = True
    p = oracle(table, "is_favorited")
    logit = np.log(p / (1 - p))
    only_low, only_high = low & ~high, high & ~low
    assert only_low.sum() > 200 and only_high.sum() > 200
    assert logit[only_high].mean() - logit[only_low].mean() > 1.0
    # Without ratings the data keeps its engagement types: actions 0..3.
    assert lists(generate_table(make_world(ON, 5), _rng(5, 8), 2_000, 0), "history.action")[1].max() <= NUM_ACTIONS - 1


def test_command_writes_ratings(tmp_path):
    assert main(["data", "generate", "--output", str(tmp_path), "--rows", "3000", "--history-length", "8",
                 "--history-ratings", "--processes", "1"]) == 0
    ratings = lists(ds.dataset(tmp_path / "train").to_table(), "history.action")[1]
    assert ratings.max() == 4
