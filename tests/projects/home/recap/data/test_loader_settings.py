"""data.shuffle, data.shuffle_buffer_rows and data.num_workers change what the loader yields, as documented."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from projects.home.recap.data.config import DataConfig
from projects.home.recap.data.loader import RecapDataLoader


def write_ids(path, start: int, n: int, row_group_size: int) -> None:
    """A file of rows start..start+n: a row id and one label, in row groups of row_group_size."""
    rid = np.arange(start, start + n)
    pq.write_table(pa.table({"row_id": rid, "label_a": rid % 2}), path, row_group_size=row_group_size)


def config(paths, **settings) -> DataConfig:
    """Rows carry only their id (and a label): the order they come out in is all these tests look at."""
    cfg = {
        "features": {"ids": ["row_id"]},
        "tasks": {"a": {"label": "label_a"}},
        "train": {"paths": [str(p) for p in paths]},
        "num_workers": 0,
    }
    return DataConfig.model_validate(cfg | settings)


def epochs(loader: RecapDataLoader, n: int) -> list[list[list[int]]]:
    """The row ids of each batch of the next n epochs."""
    return [[b.ids["row_id"].tolist() for b in loader] for _ in range(n)]


@pytest.fixture
def two_files(tmp_path):
    """64 rows: ids 0-31 in a.parquet, 32-63 in b.parquet, row groups of 8."""
    write_ids(tmp_path / "a.parquet", 0, 32, 8)
    write_ids(tmp_path / "b.parquet", 32, 32, 8)
    return tmp_path


@pytest.mark.parametrize("workers", [0, 1])
def test_shuffle_false_trains_in_file_and_row_order_every_epoch(two_files, workers):
    data = config([two_files], shuffle=False, num_workers=workers)
    first, second = epochs(RecapDataLoader(data, data.train, ["a"], "train", batch_size=8), 2)
    assert first == [list(range(i, i + 8)) for i in range(0, 64, 8)]
    assert second == first


def test_shuffle_true_differs_between_epochs_and_repeats_with_the_seed(two_files):
    def run(seed: int) -> list[list[list[int]]]:
        data = config([two_files], seed=seed)
        return epochs(RecapDataLoader(data, data.train, ["a"], "train", batch_size=8), 2)

    first, second = run(seed=3)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(64))
    assert first != second
    assert run(seed=3) == [first, second]
    assert run(seed=4) != [first, second]


def test_shuffle_buffer_of_one_row_group_keeps_batches_within_it(tmp_path):
    write_ids(tmp_path / "f.parquet", 0, 64, 8)
    data = config([tmp_path], shuffle_buffer_rows=8)
    batches = epochs(RecapDataLoader(data, data.train, ["a"], "train", batch_size=8), 1)[0]
    groups = [sorted(b) for b in batches]
    assert sorted(groups) == [list(range(g, g + 8)) for g in range(0, 64, 8)]
    # Rows are still shuffled within the buffer, and row groups are read in a shuffled order.
    assert any(b != sorted(b) for b in batches)
    assert [g[0] for g in groups] != sorted(g[0] for g in groups)


def test_shuffle_buffer_of_two_row_groups_mixes_them(tmp_path):
    write_ids(tmp_path / "f.parquet", 0, 64, 8)
    data = config([tmp_path], shuffle_buffer_rows=16)
    batches = epochs(RecapDataLoader(data, data.train, ["a"], "train", batch_size=8), 1)[0]
    groups = [{i // 8 for i in b} for b in batches]
    # A buffer holds two row groups; each of its two batches draws from both.
    assert all(len(g) == 2 for g in groups)
    assert all(groups[j] == groups[j + 1] for j in range(0, 8, 2))
    assert sorted(sum(batches, [])) == list(range(64))


def test_num_workers_is_read_from_the_config(two_files):
    data = config([two_files], shuffle=False, num_workers=2, shuffle_buffer_rows=16)
    loader = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8)
    assert loader.num_workers == 2
    assert loader.state_dict()["num_workers"] == 2
    rows = sum(epochs(loader, 1)[0], [])
    # Two workers read rows 0-31 and 32-63 in buffers of 16; the DataLoader takes their buffers in turn. One
    # process would give 0-63 in order.
    assert rows == [*range(0, 16), *range(32, 48), *range(16, 32), *range(48, 64)]
    explicit = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=0)
    assert explicit.state_dict()["num_workers"] == 0
    assert sum(epochs(explicit, 1)[0], []) == list(range(64))
