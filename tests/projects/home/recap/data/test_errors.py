"""Bad input gets an error that names the file and the column (or a warning and a skip, when asked)."""

from __future__ import annotations

import logging
import multiprocessing
import re

import numpy as np
import pyarrow as pa
import pytest

from projects.home.recap.data.errors import DataError
from projects.home.recap.data.loader import RecapDataLoader, validate_dataset

from .conftest import data_config, write_rows


def test_missing_column_names_file_and_column(uneven_dir):
    data = data_config([str(uneven_dir)], features={"continuous": ["no_such_column"]})
    with pytest.raises(DataError, match=r"f0\.parquet, column 'no_such_column': missing column"):
        validate_dataset(data, data.train, ["a"])


def test_missing_label_column_is_named_with_its_task(uneven_dir):
    data = data_config([str(uneven_dir)], tasks={"a": {"label": "label_z"}})
    with pytest.raises(DataError, match=r"column 'label_z': missing column \(configured as data.tasks.a.label\)"):
        validate_dataset(data, data.train, ["a"])


def test_task_without_label_entry(uneven_dir):
    data = data_config([str(uneven_dir)])
    with pytest.raises(ValueError, match=r"tasks \['c'\] have no entry in data.tasks"):
        validate_dataset(data, data.train, ["a", "c"])


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("scalar_cont", pa.array(["x"] * 10), "type string is not numbers"),
        ("disc", pa.array(np.zeros(10)), "type double is not integers"),
        ("ids", pa.array(np.arange(10.0)), "type double cannot hold sparse ids"),
        ("cont", pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(40, np.float32)), 4),
         "has length 4 but data.features.continuous\\[0\\] declares length 3"),
        ("scalar_cont", pa.array([[1.0]] * 10), "is a list column but data.features.continuous\\[1\\] declares a scalar"),
        ("emb", pa.array(np.zeros(10, np.float32)), "is a scalar column but data.features.embeddings\\[0\\]"),
    ],
)
def test_wrong_type_names_file_and_column(tmp_path, column, value, message):
    write_rows(tmp_path / "good.parquet", 0, 10, 10)
    write_rows(tmp_path / "bad.parquet", 10, 10, 10, **{column: value})
    data = data_config([str(tmp_path)])
    with pytest.raises(DataError, match=rf"bad\.parquet, column '{column}': .*{message}"):
        validate_dataset(data, data.train, ["a"])


@pytest.mark.parametrize("workers", [0, 1])
def test_labels_outside_0_1(tmp_path, workers):
    write_rows(tmp_path / "good.parquet", 0, 10, 10)
    labels = np.zeros(10, dtype=np.int64)
    labels[3] = 2
    write_rows(tmp_path / "bad.parquet", 10, 10, 10, label_a=pa.array(labels))
    data = data_config([str(tmp_path)])
    loader = RecapDataLoader(data, data.train, ["a"], "eval", batch_size=4, num_workers=workers)
    with pytest.raises(DataError, match=r"bad\.parquet, column 'label_a': 1 labels outside \{0, 1\} \(first: 2\)"):
        list(loader)


def test_worker_error_shuts_the_workers_down_at_once(tmp_path):
    # Left to the garbage collector, each persistent worker would wait out torch's shutdown timeout (5 s) after the
    # error; the loader stops them while raising, and its next epoch starts new ones.
    write_rows(tmp_path / "good.parquet", 0, 10, 10)
    labels = np.zeros(10, dtype=np.int64)
    labels[3] = 2
    write_rows(tmp_path / "bad.parquet", 10, 10, 10, label_a=pa.array(labels))
    data = data_config([str(tmp_path)])
    loader = RecapDataLoader(data, data.train, ["a"], "eval", batch_size=4, num_workers=2)
    with pytest.raises(DataError, match=r"bad\.parquet, column 'label_a'") as raised:
        list(loader)
    assert multiprocessing.active_children() == []
    assert "Original Traceback" not in str(raised.value)  # the error as the worker raised it, one line
    assert str(raised.value).count("\n") == 0
    with pytest.raises(DataError, match=r"bad\.parquet"):
        list(loader)


def test_ragged_list_in_fixed_length_column(tmp_path):
    ragged = pa.array([[1.0, 2.0, 3.0]] * 9 + [[1.0]], type=pa.list_(pa.float32()))
    write_rows(tmp_path / "bad.parquet", 0, 10, 10, cont=ragged)
    data = data_config([str(tmp_path)])
    with pytest.raises(DataError, match=r"bad\.parquet, column 'cont': list lengths range from 1 to 3"):
        list(RecapDataLoader(data, data.train, ["a"], "eval"))


def test_empty_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    data = data_config([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="empty dataset: no parquet files found"):
        validate_dataset(data, data.train, ["a"])
    write_rows(tmp_path / "empty" / "zero.parquet", 0, 0, 10)
    with pytest.raises(DataError, match="empty dataset: 1 files but no rows"):
        validate_dataset(data, data.train, ["a"])


def test_missing_path(tmp_path):
    data = data_config([str(tmp_path / "nowhere")])
    with pytest.raises(DataError, match="nowhere: no such file or directory"):
        validate_dataset(data, data.train, ["a"])


def test_fewer_rows_than_a_training_batch_per_rank(uneven_dir):
    data = data_config([str(uneven_dir)])
    with pytest.raises(DataError, match="180 rows are fewer than one batch of 100 per rank on 2 ranks"):
        RecapDataLoader(data, data.train, ["a"], "train", 0, 2, batch_size=100)


def test_corrupt_file_is_named_or_skipped_with_a_warning(uneven_dir, caplog):
    (uneven_dir / "f1.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    data = data_config([str(uneven_dir)])
    with pytest.raises(DataError, match=r"f1\.parquet: not a readable parquet file"):
        validate_dataset(data, data.train, ["a"])
    tolerant = data_config([str(uneven_dir)], ignore_data_errors=True)
    with caplog.at_level(logging.WARNING):
        loader = RecapDataLoader(tolerant, tolerant.train, ["a"], "eval", batch_size=16)
    assert "skipping corrupt parquet file" in caplog.text and "f1.parquet" in caplog.text
    rows = np.concatenate([b.ids["row_id"] for b in loader])
    assert sorted(rows.tolist()) == list(range(53)) + list(range(60, 180))


def test_truncated_file_is_named(uneven_dir):
    path = uneven_dir / "f2.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    data = data_config([str(uneven_dir)])
    with pytest.raises(DataError, match=r"f2\.parquet: not a readable parquet file"):
        validate_dataset(data, data.train, ["a"])


def test_null_discrete_values_are_read_as_id_0_and_said_once_per_file_and_column(tmp_path, caplog):
    write_rows(tmp_path / "good.parquet", 0, 10, 5)
    disc = pa.array([None if i in (1, 2, 7) else i % 5 for i in range(10)], type=pa.int64())
    write_rows(tmp_path / "nulls.parquet", 10, 10, 5, disc=disc)
    data = data_config([str(tmp_path)])
    loader = RecapDataLoader(data, data.train, ["a"], "eval", batch_size=20, num_workers=0)
    with caplog.at_level(logging.WARNING):
        batches = list(loader) + list(loader)  # two epochs: still one message
    column = 0  # disc is the only discrete column of the test schema
    values = batches[0].discrete[10:, column].tolist()
    assert [values[i] for i in (1, 2, 7)] == [0, 0, 0]
    messages = [r.getMessage() for r in caplog.records if "null values in discrete column" in r.getMessage()]
    assert len(messages) == 1
    assert "nulls.parquet: 2 null values in discrete column disc (row group 0; more may follow" in messages[0]


def test_skipped_rows_and_their_resampled_stand_ins_are_said(tmp_path, caplog):
    import pyarrow.parquet as pq

    write_rows(tmp_path / "good.parquet", 0, 40, 20)
    write_rows(tmp_path / "bad.parquet", 40, 40, 20)
    path = tmp_path / "bad.parquet"
    raw = bytearray(path.read_bytes())
    first = pq.ParquetFile(path).metadata.row_group(0)
    # Overwrite the first row group's column data (the footer stays readable, so the file is scanned).
    start = min(first.column(i).data_page_offset for i in range(first.num_columns))
    raw[start : start + first.total_byte_size // 2] = b"\xff" * (first.total_byte_size // 2)
    path.write_bytes(bytes(raw))
    # Fills of all 80 rows: the unreadable row group leaves readable rows in its fill.
    tolerant = data_config([str(tmp_path)], ignore_data_errors=True, shuffle_buffer_rows=80)
    loader = RecapDataLoader(tolerant, tolerant.train, ["a"], "train", batch_size=8, num_workers=0)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert sum(b.batch_size for b in batches) == len(loader) * 8  # the batch count holds
    assert re.search(r"skipping unreadable row group 0 of .*bad\.parquet \(20 rows dropped\)", caplog.text)
    assert re.search(r"epoch 0, rows \d+-\d+: 20 unreadable rows replaced by repeats of \d+ readable ones", caplog.text)
