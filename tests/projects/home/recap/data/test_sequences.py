"""History groups in the loader: jagged per-row lists kept to the max_length most recent items (most recent first,
whichever end the file stores them at), candidate ids, the same rows whatever the shuffling, workers or prepared
layout, and named errors for unequal lengths, nulls inside lists and wrong types."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.loader import RecapDataLoader

from .conftest import data_config, write_rows

N = 40


def history(rid: int) -> list[int]:
    """Row r's stored history: r % 6 items (row 5k+1 has a null list), oldest first: 100r+0, 100r+1, ..."""
    return [100 * rid + j for j in range(rid % 6)]


def history_columns(start: int, n: int) -> dict:
    rows = [history(r) for r in range(start, start + n)]
    null = [r % 5 == 1 for r in range(start, start + n)]
    def lists(fn, kind):
        return pa.array([None if z else [fn(v) for v in h] for h, z in zip(rows, null)], type=pa.list_(kind))
    return {
        "hist_author": lists(lambda v: v, pa.int64()),
        "hist_action": lists(lambda v: v % 4, pa.int32()),
        "hist_age": lists(lambda v: float(v % 100) * 0.5, pa.float32()),
        "author": pa.array(np.arange(start, start + n) * 7, type=pa.int64()),
    }


def sequence_config(paths, most_recent="last", max_length=3, **extra):
    config = data_config(paths, **extra).model_dump()
    config["features"]["sequences"] = {"hist": {
        "max_length": max_length, "most_recent": most_recent,
        "ids": [{"name": "hist_author", "candidate": "author"}], "actions": "hist_action",
        "continuous": ["hist_age"]}}
    return type(data_config(paths)).model_validate(config)


@pytest.fixture
def files(tmp_path):
    out = []
    for i, start in enumerate((0, N // 2)):
        path = tmp_path / f"part-{i}.parquet"
        write_rows(path, start, N // 2, row_group_size=7, **history_columns(start, N // 2))
        out.append(str(path))
    return out


def expected(rid: int, most_recent: str, max_length: int) -> list[int]:
    items = [] if rid % 5 == 1 else history(rid)
    if most_recent == "last":
        items = items[::-1]
    return items[:max_length]


def rows_of(loader) -> dict[int, tuple]:
    out = {}
    for batch in loader:
        group = batch.sequences["hist"]
        lengths = group["lengths"].tolist()
        assert group["id:hist_author"].shape == (sum(lengths),) and group["continuous"].shape == (sum(lengths), 1)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, rid in enumerate(batch.ids["row_id"].tolist()):
            a, b = offsets[i], offsets[i + 1]
            out[rid] = (group["id:hist_author"][a:b].tolist(), group["actions"][a:b].tolist(),
                        group["continuous"][a:b, 0].tolist(), int(group["candidate:hist_author"][i]))
    return out


@pytest.mark.parametrize("most_recent", ["first", "last"])
def test_each_row_gets_its_most_recent_items_first(files, most_recent):
    config = sequence_config(files, most_recent=most_recent)
    got = rows_of(RecapDataLoader(config, DatasetConfig(paths=files), ["a", "b"], "eval", batch_size=6))
    assert sorted(got) == list(range(N))
    for rid, (authors, actions, ages, candidate) in got.items():
        want = expected(rid, most_recent, 3)
        assert authors == want, rid
        assert actions == [v % 4 for v in want] and ages == [float(v % 100) * 0.5 for v in want]
        assert candidate == 7 * rid


def test_train_mode_with_workers_keeps_each_row_with_its_history(files):
    config = sequence_config(files)
    loader = RecapDataLoader(config, DatasetConfig(paths=files), ["a", "b"], "train", batch_size=5, num_workers=1)
    got = rows_of(loader)
    assert len(got) == N
    for rid, (authors, _, _, candidate) in got.items():
        assert authors == expected(rid, "last", 3) and candidate == 7 * rid


def _write(tmp_path, **columns):
    path = tmp_path / "bad.parquet"
    write_rows(path, 0, 6, row_group_size=6, **{**history_columns(0, 6), **columns})
    return [str(path)]


def test_unequal_lengths_nulls_inside_lists_and_wrong_types_are_named(tmp_path):
    ragged = pa.array([[1], [2, 3], [], [4], [5], [6]], type=pa.list_(pa.int32()))
    paths = _write(tmp_path, hist_action=ragged)
    loader = RecapDataLoader(sequence_config(paths), DatasetConfig(paths=paths), ["a", "b"], "eval")
    with pytest.raises(DataError, match=r"hist_action.*rows whose list length differs from hist_author's"):
        list(loader)
    holes = pa.array([[1], [2, None], [], [], [], []], type=pa.list_(pa.int64()))
    paths = _write(tmp_path, hist_author=holes)
    loader = RecapDataLoader(sequence_config(paths), DatasetConfig(paths=paths), ["a", "b"], "eval")
    with pytest.raises(DataError, match=r"hist_author.*1 null values inside history lists"):
        list(loader)
    fractions = pa.array([[0.5]] * 6, type=pa.list_(pa.float64()))
    paths = _write(tmp_path, hist_author=fractions)
    with pytest.raises(DataError, match=r"hist_author.*does not hold integer or string ids"):
        RecapDataLoader(sequence_config(paths), DatasetConfig(paths=paths), ["a", "b"], "eval")
    paths = _write(tmp_path, hist_age=pa.array(np.ones(6)))
    with pytest.raises(DataError, match=r"hist_age.*not a variable-length list"):
        RecapDataLoader(sequence_config(paths), DatasetConfig(paths=paths), ["a", "b"], "eval")


def test_prepared_data_gives_the_same_histories(files, tmp_path):
    from projects.home.recap.data.preparing import prepare

    source = tmp_path / "source"
    source.mkdir()
    for f in files:
        (source / f.rsplit("/", 1)[1]).write_bytes(open(f, "rb").read())
    config = sequence_config([str(source)])
    prepare(config, str(source), str(tmp_path / "prepared"))
    loaders = [RecapDataLoader(config, DatasetConfig(paths=[str(p)]), ["a", "b"], "train", batch_size=5)
               for p in (source, tmp_path / "prepared")]
    batches = [list(loader) for loader in loaders]
    assert len(batches[0]) == len(batches[1]) == N // 5
    for a, b in zip(*batches):
        assert a.ids["row_id"].tolist() == b.ids["row_id"].tolist()
        for key, tensor in a.sequences["hist"].items():
            assert tensor.equal(b.sequences["hist"][key]), key


def test_action_ids_outside_num_actions_are_named(tmp_path):
    from pathlib import Path

    from projects.home.recap.schema import load_recap_config

    # The experiment config hands the model's num_actions to the data group it reads.
    demo = Path(__file__).parents[5] / "projects/home/recap/config/demo_history.yaml"
    assert load_recap_config(demo).data.features.sequences["history"]._num_actions == 4
    for bad, first in ((4, 4), (-1, -1)):
        actions = pa.array([[1], [2, bad], [], [3], [0], [bad]], type=pa.list_(pa.int32()))
        authors = pa.array([[1], [2, 3], [], [4], [5], [6]], type=pa.list_(pa.int64()))
        ages = pa.array([[1.0], [2.0, 3.0], [], [4.0], [5.0], [6.0]], type=pa.list_(pa.float32()))
        paths = _write(tmp_path, hist_action=actions, hist_author=authors, hist_age=ages)
        config = sequence_config(paths)
        config.features.sequences["hist"]._num_actions = 4
        loader = RecapDataLoader(config, DatasetConfig(paths=paths), ["a", "b"], "eval")
        with pytest.raises(DataError, match=rf"bad\.parquet.*'hist_action'.*2 action ids outside \[0, 4\) \(first: "
                                            rf"{first}\); model.sequences.hist.num_actions is 4"):
            list(loader)


def test_non_finite_history_values_are_counted_like_continuous_features(tmp_path):
    counts = []
    for nan in (0.0, float("nan")):
        # Rows 1 and 3 hold a NaN and an inf among their items (both within max_length 3).
        ages = pa.array([[1.0], [2.0, nan], [], [float("inf") if nan != 0 else 0.0], [5.0], [6.0]],
                        type=pa.list_(pa.float32()))
        lists = {k: pa.array([[1], [2, 3], [], [4], [5], [6]], type=pa.list_(pa.int64()))
                 for k in ("hist_author", "hist_action")}
        paths = _write(tmp_path, hist_age=ages, **lists)
        loader = RecapDataLoader(sequence_config(paths), DatasetConfig(paths=paths), ["a", "b"], "eval",
                                 batch_size=4)
        list(loader)
        counts.append(loader.num_nonfinite)
    assert counts[1] - counts[0] == 2


def _scorer_metadata(config) -> dict:
    """The part of an export's metadata.json the standalone scorer reads for this data: no dense or sparse
    features, the history group as `recap export` describes it."""
    from projects.home.recap.serving.metadata import _history_spec

    dense = [{"name": k, "dtype": "float32" if k != "discrete" else "int64", "columns": [], "missing_value": 0}
             for k in ("continuous", "binary", "discrete", "embeddings")]
    group = _history_spec("hist", config.features.sequences["hist"], 4)
    return {"inputs": [*dense, {"name": "sparse_values", "features": []},
                       {"name": "histories", "groups": {"hist": group}}]}


def test_the_standalone_scorer_reads_histories_as_the_loader_does(tmp_path):
    import pyarrow.parquet as pq

    from projects.home.recap.serving.score_example import table_inputs
    from projects.home.recap.serving.serving_model import serving_inputs

    # history_columns: every 5th row's lists are null (an empty history); row 2's action list alone is null while
    # its other lists are empty.
    columns = history_columns(0, 12)
    actions = columns["hist_action"].to_pylist()
    columns["hist_action"] = pa.array([None if i == 2 else a for i, a in enumerate(actions)], pa.list_(pa.int32()))
    columns["hist_author"] = pa.array([[] if i == 2 else a for i, a in enumerate(columns["hist_author"].to_pylist())],
                                      pa.list_(pa.int64()))
    columns["hist_age"] = pa.array([[] if i == 2 else a for i, a in enumerate(columns["hist_age"].to_pylist())],
                                   pa.list_(pa.float32()))
    path = tmp_path / "h.parquet"
    write_rows(path, 0, 12, row_group_size=12, **columns)
    config = sequence_config([str(path)], max_length=3)
    config.features.sequences["hist"]._num_actions = 4
    [batch] = RecapDataLoader(config, DatasetConfig(paths=[str(path)]), ["a", "b"], "predict", batch_size=12)
    metadata = _scorer_metadata(config)
    for share in (True, False):
        expected, expected_requests = serving_inputs(batch, [], {"hist": 3}, share)[-2:]
        scored, requests = table_inputs(pq.read_table(path), metadata, "h.parquet", share)[-2:]
        assert scored.keys() == expected.keys()
        assert torch.equal(requests, expected_requests)
        for key in expected:
            assert torch.equal(scored[key], expected[key]), key
    # Rows 0, 1 and 2 have empty histories (no item, a null list, empty lists): one request of three rows; every
    # other row's history differs from its neighbours'. Row by row, 12 requests.
    assert table_inputs(pq.read_table(path), metadata, "h.parquet")[-1].tolist() == [0, 0, 0, *range(1, 10)]
    assert table_inputs(pq.read_table(path), metadata, "h.parquet", False)[-1].tolist() == list(range(12))

    # What the loader rejects, the scorer rejects with the same words, naming the column.
    bad = [(dict(hist_author=pa.array([[1], [2, None]] + [[]] * 10, pa.list_(pa.int64()))),
            r"column 'hist_author': 1 null values inside history lists \(group 'hist'\)"),
           (dict(hist_action=pa.array([[1], [2, 7]] + [[]] * 10, pa.list_(pa.int32())),
                 hist_author=pa.array([[1], [2, 3]] + [[]] * 10, pa.list_(pa.int64())),
                 hist_age=pa.array([[1.0], [2.0, 3.0]] + [[]] * 10, pa.list_(pa.float32()))),
            r"column 'hist_action': 1 action ids outside \[0, 4\) \(first: 7\)")]
    for changes, message in bad:
        write_rows(path, 0, 12, row_group_size=12, **{**columns, **changes})
        with pytest.raises(DataError, match=message):
            list(RecapDataLoader(config, DatasetConfig(paths=[str(path)]), ["a", "b"], "predict"))
        with pytest.raises(ValueError, match="h.parquet: " + message):
            table_inputs(pq.read_table(path), metadata, "h.parquet")


def test_history_columns_of_the_wrong_type_or_unequal_lengths_are_named_by_the_loader_and_the_scorer(tmp_path):
    import pyarrow.parquet as pq

    from projects.home.recap.serving.score_example import table_inputs

    floats = pa.array([[1.0], [2.5, 3.0], [], [4.0], [5.0], [6.0]], type=pa.list_(pa.float64()))
    words = pa.array([["x"], ["y", "z"], [], ["w"], ["v"], ["u"]], type=pa.list_(pa.string()))
    flags = pa.array([[True], [False, True], [], [True], [True], [False]], type=pa.list_(pa.bool_()))
    ints = pa.array([[1], [2, 3], [], [4], [5], [6]], type=pa.list_(pa.int64()))
    ragged = pa.array([[1], [2], [], [3], [0], [1]], type=pa.list_(pa.int64()))
    actions = pa.array([[1], [2, 3], [], [3], [0], [1]], type=pa.list_(pa.int64()))
    same = {"hist_author": ints, "hist_action": actions, "hist_age": floats}
    cases = [
        # (changed columns, the loader's message, the scorer's message)
        ({"hist_author": floats}, r"'hist_author'.*type list<\w+: double> does not hold integer or string ids "
                                  r"\(data.features.sequences.hist.ids\[0\]\)",
         r"column 'hist_author': type list<\w+: double> does not hold integer or string ids \(a list column of "
         r"history group 'hist'\)"),
        ({"hist_author": flags}, r"'hist_author'.*does not hold integer or string ids "
                                 r"\(data.features.sequences.hist.ids\[0\]\)",
         r"column 'hist_author': type list<\w+: bool> does not hold integer or string ids"),
        ({"hist_action": floats}, r"'hist_action'.*does not hold integer action types "
                                  r"\(data.features.sequences.hist.actions\)",
         r"column 'hist_action': type list<\w+: double> does not hold integer action types \(a list column of "
         r"history group 'hist'\)"),
        ({"hist_age": words}, r"'hist_age'.*does not hold numbers \(data.features.sequences.hist.continuous\[0\]\)",
         r"column 'hist_age': type list<\w+: string> does not hold numbers"),
        ({"author": pa.array([1.5] * 6)}, r"'author'.*cannot hold candidate ids: need integer or string ids",
         r"column 'author': type double cannot hold candidate ids"),
        ({"hist_action": ragged}, r"'hist_action'.*1 rows whose list length differs from hist_author's in history "
                                  r"group 'hist' \(first: row 1, 1 against 2\)",
         r"column 'hist_action': 1 rows whose list length differs from hist_author's in history group 'hist'"),
    ]
    for changes, loader_message, scorer_message in cases:
        paths = _write(tmp_path, **{**same, **changes})
        config = sequence_config(paths)
        config.features.sequences["hist"]._num_actions = 4
        with pytest.raises(DataError, match=loader_message):
            list(RecapDataLoader(config, DatasetConfig(paths=paths), ["a", "b"], "eval"))
        with pytest.raises(ValueError, match="bad.parquet: " + scorer_message):
            table_inputs(pq.read_table(paths[0]), _scorer_metadata(config), "bad.parquet")


def test_string_history_ids_and_candidates_are_hashed_alike_by_the_loader_and_the_scorer(tmp_path):
    import pyarrow.parquet as pq

    from projects.home.recap.data.list_checks import id_values
    from projects.home.recap.serving.score_example import table_inputs
    from projects.home.recap.serving.serving_model import serving_inputs

    # Authors as strings ("a<id>"), the candidate a string too, one null candidate: row r's candidate is the author
    # of its most recent history item, so the two must map to the same id.
    columns = history_columns(0, 12)
    columns["hist_author"] = pa.array([None if h is None else [f"a{v}" for v in h]
                                       for h in columns["hist_author"].to_pylist()], pa.list_(pa.string()))
    candidates = [f"a{h[-1]}" if h else "nobody" for h in (history(r) for r in range(12))]
    columns["author"] = pa.array([None if r == 3 else c for r, c in enumerate(candidates)], pa.large_string())
    path = tmp_path / "h.parquet"
    write_rows(path, 0, 12, row_group_size=12, **columns)
    config = sequence_config([str(path)], max_length=3)
    config.features.sequences["hist"]._num_actions = 4
    [batch] = RecapDataLoader(config, DatasetConfig(paths=[str(path)]), ["a", "b"], "predict", batch_size=12)
    got = rows_of([batch])
    assert sorted(got) == list(range(12))
    for r, (authors, _, _, candidate) in got.items():
        items = [f"a{v}" for v in expected(r, "last", 3)]
        assert authors == id_values(pa.array(items, pa.string())).tolist()
        assert candidate == (0 if r == 3 else id_values(pa.array([candidates[r]])).item())
        if items and r != 3:
            assert candidate == authors[0]  # the most recent item's author, hashed alike
    expected_inputs = serving_inputs(batch, [], {"hist": 3}, False)[-2]
    scored = table_inputs(pq.read_table(path), _scorer_metadata(config), "h.parquet", False)[-2]
    assert scored.keys() == expected_inputs.keys()
    for key in expected_inputs:
        assert torch.equal(scored[key], expected_inputs[key]), key
