"""Column shapes the schema allows reach the batch row by row: scalar id columns, fixed-length binary and discrete
lists; a list whose length is not the declared one is a DataError naming the file, column and length."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from projects.home.recap.data.config import DataConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.loader import RecapDataLoader, validate_dataset

N = 24


def write(path, **columns) -> None:
    """A file of N rows (row_id 0..N-1, label_a) plus `columns`, in row groups of 8."""
    rid = np.arange(N)
    pq.write_table(pa.table({"row_id": rid, "label_a": rid % 2, **columns}), path, row_group_size=8)


def config(path, **features) -> DataConfig:
    return DataConfig.model_validate({
        "features": {"ids": ["row_id"], **features},
        "tasks": {"a": {"label": "label_a"}},
        "train": {"paths": [str(path)]},
        "num_workers": 0,
        "shuffle_buffer_rows": 16,
    })


def train_batches(data: DataConfig, batch_size: int = 6, workers: int = 0) -> list:
    """One shuffled training epoch (rows come out of order, so every check goes through row_id)."""
    return list(RecapDataLoader(data, data.train, ["a"], "train", batch_size=batch_size, num_workers=workers))


def test_scalar_sparse_column_is_one_id_per_row(tmp_path):
    write(tmp_path / "f.parquet", item=pa.array(np.arange(N) * 7 - 50))
    for batch in train_batches(config(tmp_path, sparse=["item"])):
        rid = batch.ids["row_id"]
        ids = batch.sparse.to_dict()["item"]
        assert ids.lengths().tolist() == [1] * len(rid)
        assert ids.values().tolist() == (rid * 7 - 50).tolist()


def test_null_scalar_id_is_a_row_without_ids_like_a_null_list(tmp_path):
    def value(r: int) -> int | None:
        return None if r % 3 == 0 else 100 + r

    scalar = pa.array([value(r) for r in range(N)], type=pa.int64())
    listed = pa.array([None if r % 3 == 0 else [100 + r] for r in range(N)], type=pa.list_(pa.int64()))
    write(tmp_path / "f.parquet", item=scalar, item_list=listed)
    batches = train_batches(config(tmp_path, sparse=["item", "item_list"]), workers=1)
    assert len(batches) == N // 6
    for batch in batches:
        rid = batch.ids["row_id"].tolist()
        jagged = batch.sparse.to_dict()
        expected = [value(r) for r in rid]
        for key in ("item", "item_list"):
            assert jagged[key].lengths().tolist() == [0 if v is None else 1 for v in expected], key
            assert jagged[key].values().tolist() == [v for v in expected if v is not None], key


def _fnv1a_63(text: str) -> int:
    """The documented string id: 64-bit FNV-1a of the UTF-8 bytes, top bit cleared (written out independently)."""
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h & (2**63 - 1)


@pytest.mark.parametrize("source", ["parquet", "parquet, 1 worker", "prepared"])
def test_string_ids_are_hashed_the_same_in_every_file_reader_and_layout(tmp_path, source):
    def user(r: int) -> str | None:
        return None if r % 5 == 0 else f"user-{r % 4}-é"

    def tags(r: int) -> list[str] | None:
        return None if r % 7 == 3 else [f"#t{r + j}" for j in range(r % 3)]

    columns = {
        "user": pa.array([user(r) for r in range(N)], pa.string()),
        "user_dict": pa.array([user(r) for r in range(N)], pa.string()).dictionary_encode(),
        "tags": pa.array([tags(r) for r in range(N)], pa.list_(pa.large_string())),
        "raw": pa.array([(user(r) or "").encode() for r in range(N)], pa.binary()),
    }
    write(tmp_path / "f.parquet", **columns)
    data = config(tmp_path / "f.parquet", sparse=list(columns))
    if source == "prepared":
        from projects.home.recap.data.preparing import prepare

        prepare(data, str(tmp_path / "f.parquet"), str(tmp_path / "prepared"))
        data = config(tmp_path / "prepared", sparse=list(columns))
    batches = train_batches(data, workers=1 if "worker" in source else 0)
    assert sum(len(b.ids["row_id"]) for b in batches) == N
    for batch in batches:
        rid = batch.ids["row_id"].tolist()
        jagged = batch.sparse.to_dict()
        users = [user(r) for r in rid]
        for key in ("user", "user_dict"):
            assert jagged[key].lengths().tolist() == [0 if u is None else 1 for u in users], key
            assert jagged[key].values().tolist() == [_fnv1a_63(u) for u in users if u is not None], key
        assert jagged["raw"].values().tolist() == [_fnv1a_63(u or "") for u in users]
        expected = [tags(r) or [] for r in rid]
        assert jagged["tags"].lengths().tolist() == [len(t) for t in expected]
        assert jagged["tags"].values().tolist() == [_fnv1a_63(t) for row in expected for t in row]


@pytest.mark.parametrize("source", ["parquet", "prepared"])
def test_decimal_continuous_columns_are_read_as_floats(tmp_path, source):
    from decimal import Decimal

    def price(r: int) -> Decimal | None:
        return None if r % 4 == 1 else Decimal(f"{r * 3}.{r % 100:02d}")

    write(tmp_path / "f.parquet", price=pa.array([price(r) for r in range(N)], pa.decimal128(10, 2)),
          big=pa.array([Decimal(r) * 10**20 for r in range(N)], pa.decimal256(40, 0)))
    data = config(tmp_path / "f.parquet", continuous=["price", "big"])
    validate_dataset(data, data.train, ["a"])
    if source == "prepared":
        from projects.home.recap.data.preparing import prepare

        prepare(data, str(tmp_path / "f.parquet"), str(tmp_path / "prepared"))
        data = config(tmp_path / "prepared", continuous=["price", "big"])
    for batch in train_batches(data):
        rid = batch.ids["row_id"].tolist()
        want = torch.tensor([[np.nan if price(r) is None else float(price(r)), r * 1e20] for r in rid],
                            dtype=torch.float32)
        torch.testing.assert_close(batch.continuous, want, equal_nan=True)


def test_null_inside_an_id_list_is_an_error(tmp_path):
    write(tmp_path / "f.parquet", item=pa.array([[1, None]] + [[2]] * (N - 1), type=pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"f\.parquet, column 'item': 1 null ids inside lists"):
        train_batches(config(tmp_path, sparse=["item"]))


def test_binary_and_discrete_list_columns_land_at_their_offsets(tmp_path):
    rid = np.arange(N)
    bits = np.stack([(rid >> k) & 1 for k in range(3)], 1)  # row r: its three low bits, a pattern per row
    write(
        tmp_path / "f.parquet",
        flag=pa.array((rid >> 3) & 1),
        bits=pa.FixedSizeListArray.from_arrays(pa.array(bits.ravel().astype(np.int8)), 3),
        # A variable-size list type whose rows all have the declared length.
        recent=pa.array([[10 * r, 10 * r + 1] for r in rid], type=pa.list_(pa.int64())),
        hour=pa.array(rid % 24),
        codes=pa.FixedSizeListArray.from_arrays(pa.array(np.stack([-rid, rid * rid, rid + 5], 1).ravel()), 3),
    )
    data = config(
        tmp_path,
        binary=["flag", {"name": "bits", "length": 3}],
        discrete=[{"name": "recent", "length": 2}, "hour", {"name": "codes", "length": 3}],
    )
    seen = []
    for batch in train_batches(data):
        r = torch.from_numpy(batch.ids["row_id"])
        assert batch.binary.shape == (6, 4) and batch.discrete.shape == (6, 6)
        expected_binary = torch.stack([(r >> 3) & 1, r & 1, (r >> 1) & 1, (r >> 2) & 1], 1).float()
        expected_discrete = torch.stack([10 * r, 10 * r + 1, r % 24, -r, r * r, r + 5], 1)
        assert torch.equal(batch.binary, expected_binary)
        assert torch.equal(batch.discrete, expected_discrete)
        seen += r.tolist()
    assert seen != sorted(seen) and sorted(seen) == list(range(N))


@pytest.mark.parametrize(
    "rows, found, workers",
    [
        ([[1, 2, 3]] * N, "lists have length 3", 0),
        # Read in a worker process: the error reaches the training process intact.
        ([[1, 2]] * (N - 1) + [[1]], "list lengths range from 1 to 2", 1),
    ],
    ids=["uniform", "ragged"],
)
def test_list_of_another_length_is_a_data_error(tmp_path, rows, found, workers):
    write(tmp_path / "bad.parquet", recent=pa.array(rows, type=pa.list_(pa.int64())))
    data = config(tmp_path, discrete=[{"name": "recent", "length": 2}])
    message = rf"bad\.parquet, column 'recent': {found}; data\.features\.discrete\[0\] declares length 2"
    with pytest.raises(DataError, match=message):
        train_batches(data, workers=workers)


def test_fixed_size_list_type_of_another_length_fails_validation(tmp_path):
    write(tmp_path / "bad.parquet", recent=pa.FixedSizeListArray.from_arrays(pa.array(np.arange(3 * N)), 3))
    data = config(tmp_path, discrete=[{"name": "recent", "length": 2}])
    with pytest.raises(DataError, match=r"bad\.parquet, column 'recent': type .* has length 3 but "
                                        r"data\.features\.discrete\[0\] declares length 2"):
        validate_dataset(data, data.train, ["a"])


def test_null_list_in_a_fixed_length_column_is_an_error(tmp_path):
    rows = [[1, 2]] * (N - 1) + [None]
    write(tmp_path / "bad.parquet", recent=pa.array(rows, type=pa.list_(pa.int64())))
    data = config(tmp_path, discrete=[{"name": "recent", "length": 2}])
    with pytest.raises(DataError, match=r"bad\.parquet, column 'recent': 1 null lists in a fixed-length column"):
        train_batches(data)


def test_schema_spans_count_list_columns_by_width():
    schema = DataConfig.model_validate({
        "features": {"continuous": ["a", {"name": "b", "length": 3}, "c"],
                     "discrete": ["x", {"name": "y", "length": 2}, "z"]},
        "tasks": {"t": {"label": "t"}},
    }).features
    assert schema.continuous_span("b") == (1, 3)
    assert schema.continuous_span("c") == (4, 1)
    assert schema.discrete_span("y") == (1, 2)
    assert schema.discrete_index("z") == 3
    with pytest.raises(ValueError, match="'y' is a list column"):
        schema.discrete_index("y")
    with pytest.raises(KeyError):
        schema.continuous_span("x")
