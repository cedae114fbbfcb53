"""LightGBM with hand-made history aggregates on the generator's history schema: the other history-aware peer.

    pip install lightgbm    # not a dependency of the project
    python -m projects.home.recap.baselines.history_gbdt --data DIR [--rounds 400] [--output FILE]

DIR is written by `recap data generate --history-length L` (optionally `--history-ratings`). One binary LightGBM per
task on the row's own features (the continuous, binary and dense-embedding columns, client, author type and hour;
the position is left out: it is not known when a served model scores) and the aggregates a user would compute from
the history (`history_aggregates`): its length, the count and share of each action type, the items' mean and
smallest age, and for the candidate's author and first hashtag the number of matching items, the matches per action
type, the age of the most recent match and an age-decayed match count. Early stopping on the validation split, test
AUC and RCE per task with core.metrics, as baselines/history_din.py reports them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from projects.home.recap.baselines.history_peers import LABEL, TASKS, finish, task_figures

DECAY_HOURS = 24.0


def _lists(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, row of each value) of a list column."""
    lists = table.column(name).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    return pc.list_flatten(lists).to_numpy(zero_copy_only=False), np.repeat(np.arange(len(lengths)), lengths)


def _first(table: pa.Table, name: str) -> np.ndarray:
    """Each row's first id of a list column (-1 for an empty list)."""
    values, row = _lists(table, name)
    out = np.full(table.num_rows, -1, dtype=np.int64)
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    out[row[first]] = values[first]
    return out


def history_aggregates(table: pa.Table, num_actions: int) -> tuple[np.ndarray, list[str]]:
    """[rows, F] aggregates of each row's history (see the module docstring) and their names."""
    rows = table.num_rows
    authors, row = _lists(table, "history.author_id")
    tags, _ = _lists(table, "history.hashtag")
    actions, _ = _lists(table, "history.action")
    ages, _ = _lists(table, "history.age_hours")
    ages = np.nan_to_num(ages.astype(np.float64), nan=0.0).clip(min=0.0)
    actions = actions.astype(np.int64).clip(0, num_actions - 1)
    length = np.bincount(row, minlength=rows).astype(np.float64)
    columns: list[np.ndarray] = [length]
    names = ["history_length"]
    for a in range(num_actions):
        count = np.bincount(row, weights=(actions == a).astype(np.float64), minlength=rows)
        columns += [count, count / np.maximum(length, 1.0)]
        names += [f"action_{a}_count", f"action_{a}_share"]
    mean_age = np.bincount(row, weights=ages, minlength=rows) / np.maximum(length, 1.0)
    min_age = np.full(rows, np.inf)
    np.minimum.at(min_age, row, ages)
    columns += [mean_age, np.where(np.isfinite(min_age), min_age, -1.0)]
    names += ["mean_age", "min_age"]
    for what, items, candidate in (("author", authors, _first(table, "author_id")),
                                   ("hashtag", tags, _first(table, "hashtags"))):
        match = (items == candidate[row]) & (candidate[row] >= 0)
        weight = match.astype(np.float64)
        columns.append(np.bincount(row, weights=weight, minlength=rows))
        names.append(f"{what}_matches")
        for a in range(num_actions):
            columns.append(np.bincount(row, weights=weight * (actions == a), minlength=rows))
            names.append(f"{what}_matches_action_{a}")
        last = np.full(rows, np.inf)
        np.minimum.at(last, row[match], ages[match])
        columns += [np.where(np.isfinite(last), last, -1.0),
                    np.bincount(row, weights=weight * np.exp(-ages / DECAY_HOURS), minlength=rows)]
        names += [f"{what}_last_match_age", f"{what}_decayed_matches"]
    return np.stack(columns, 1), names


def load(split: Path, num_actions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(features [rows, F], labels [rows, T], oracle probabilities [rows, T], feature names) of one split."""
    table = pq.read_table(split)
    own, names = [], []
    for name in ("recap.continuous", "recap.binary", "user_embedding", "author_embedding", "tweet_embedding"):
        values = np.stack(table.column(name).to_numpy(zero_copy_only=False)).astype(np.float32)
        own.append(values)
        names += [f"{name}_{i}" for i in range(values.shape[1])]
    small = ["client_id", "author_type", "hour_of_day"]
    own.append(np.stack([table.column(n).to_numpy() for n in small], 1).astype(np.float32))
    names += small
    history, history_names = history_aggregates(table, num_actions)
    features = np.concatenate([*own, history.astype(np.float32)], 1)
    labels = np.stack([table.column(LABEL + t).to_numpy() for t in TASKS], 1).astype(np.float32)
    oracle = np.stack([table.column("oracle." + LABEL + t).to_numpy() for t in TASKS], 1).astype(np.float64)
    return features, labels, oracle, names + history_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=400, help="boosting rounds at most (early stopping)")
    parser.add_argument("--num-actions", type=int, default=4)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    try:
        import lightgbm as lgb
    except ImportError:
        raise SystemExit("history_gbdt needs LightGBM, which the project does not install: pip install lightgbm") \
            from None
    train_x, train_y, _, names = load(args.data / "train", args.num_actions)
    valid_x, valid_y, _, _ = load(args.data / "validation", args.num_actions)
    test_x, test_y, test_oracle, _ = load(args.data / "test", args.num_actions)
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 63, "min_data_in_leaf": 100,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "verbose": -1, "seed": 0}
    out = {"features": len(names), "tasks": {}}
    start = time.perf_counter()
    for task in args.tasks:
        j = TASKS.index(task)
        booster = lgb.train(params, lgb.Dataset(train_x, train_y[:, j], feature_name=names),
                            num_boost_round=args.rounds, valid_sets=[lgb.Dataset(valid_x, valid_y[:, j])],
                            callbacks=[lgb.early_stopping(30, verbose=False)])
        probs = booster.predict(test_x, num_iteration=booster.best_iteration)
        out["tasks"][task] = {**task_figures(task, probs, test_y[:, j], test_oracle[:, j],
                                             f"  ({booster.best_iteration} rounds)"),
                              "rounds": booster.best_iteration}
    out["seconds"] = time.perf_counter() - start
    finish(out, f"{out['seconds']:.0f} s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
