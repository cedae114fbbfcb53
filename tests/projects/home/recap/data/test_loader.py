"""The loader as training and evaluation use it: sharding, label alignment, batch contents, resumption."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from common.batch import RecapBatch
from projects.home.recap.data.loader import RecapDataLoader

from .conftest import data_config, write_rows


def check_rows(batch: RecapBatch) -> np.ndarray:
    """Assert every part of the batch belongs to the row its row_id names (and return the ids)."""
    rid = batch.ids["row_id"]
    assert list(batch.ids["name"]) == [f"r{i}" for i in rid]
    r = torch.from_numpy(rid).float()
    assert torch.equal(batch.continuous[:, :3], torch.stack([r, -r, r / 2], 1))
    assert torch.equal(batch.binary[:, 0], r % 2)
    assert torch.equal(batch.discrete[:, 0], torch.from_numpy(rid % 5))
    assert torch.equal(batch.embeddings, torch.stack([r, r], 1))
    ids = batch.sparse.to_dict()["ids"]
    assert ids.lengths().tolist() == (rid % 3).tolist()
    expected = [10 * i + j for i in rid for j in range(i % 3)]
    assert ids.values().tolist() == expected
    return rid


@pytest.mark.parametrize("mode", ["eval", "predict"])
def test_every_row_exactly_once_across_2_ranks_x_2_workers(uneven_dir, mode):
    data = data_config([str(uneven_dir)])
    seen = []
    for rank in range(2):
        loader = RecapDataLoader(data, data.train, ["a", "b"], mode, rank, 2, batch_size=8, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 12  # 90 rows per rank: 11 full batches and one of 2
        assert [b.batch_size for b in batches].count(8) == 11
        seen += [check_rows(b) for b in batches]
    assert sorted(np.concatenate(seen).tolist()) == list(range(180))


def test_eval_order_is_deterministic(uneven_dir):
    data = data_config([str(uneven_dir)])
    loader = RecapDataLoader(data, data.train, ["a"], "eval", 0, 1, batch_size=16, num_workers=2)
    first = [b.ids["row_id"].tolist() for b in loader]
    second = [b.ids["row_id"].tolist() for b in loader]  # a new pass starts from the top again
    assert first == second


def test_train_ranks_get_equal_batches_and_no_row_twice(uneven_dir):
    data = data_config([str(uneven_dir)])
    per_rank = []
    for rank in range(2):
        loader = RecapDataLoader(data, data.train, ["a", "b"], "train", rank, 2, batch_size=8, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 180 // 16
        assert all(b.batch_size == 8 for b in batches)
        per_rank.append(np.concatenate([check_rows(b) for b in batches]))
    together = np.concatenate(per_rank)
    assert len(set(together.tolist())) == len(together) == 176
    # Shuffled: not the file order.
    assert per_rank[0].tolist() != sorted(per_rank[0].tolist())


def test_epochs_reshuffle_and_seed_fixes_order(uneven_dir):
    data = data_config([str(uneven_dir)])

    def order(epoch, seed=0):
        cfg = data.model_copy(update={"seed": seed})
        loader = RecapDataLoader(cfg, cfg.train, ["a"], "train", 0, 1, batch_size=8)
        loader.set_epoch(epoch)
        return np.concatenate([b.ids["row_id"] for b in loader]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)


def test_labels_are_matched_to_tasks_by_name(uneven_dir):
    # In the files label_b comes before label_a; the model's task order decides the label order.
    data = data_config([str(uneven_dir)])
    for tasks in (["a", "b"], ["b", "a"]):
        loader = RecapDataLoader(data, data.train, tasks, "eval", batch_size=64)
        for batch in loader:
            rid = batch.ids["row_id"]
            expected = {"a": rid % 3 == 0, "b": rid % 2 == 0}
            for j, task in enumerate(tasks):
                assert batch.labels[:, j].tolist() == expected[task].astype(np.float32).tolist()


def test_weights_are_downsampling_weights_times_row_weight(tmp_path):
    write_rows(tmp_path / "f.parquet", 0, 12, 12)
    data = data_config([str(tmp_path)], features={
        "continuous": ["scalar_cont"], "ids": ["row_id"], "weight": "w"})
    batch = next(iter(RecapDataLoader(data, data.train, ["a", "b"], "eval", batch_size=12)))
    rid = batch.ids["row_id"]
    # Task a: rates 1 -> weight 1; task b: positives 1/0.5 = 2, negatives 1/0.25 = 4; the row weight is 2.
    assert batch.weights[:, 0].tolist() == [2.0] * 12
    assert batch.weights[:, 1].tolist() == [4.0 if r % 2 == 0 else 8.0 for r in rid]
    assert batch.sparse is None and batch.binary.shape == (12, 0) and batch.embeddings.shape == (12, 0)


def test_resume_continues_with_the_same_batches(uneven_dir):
    data = data_config([str(uneven_dir)])

    def make():
        return RecapDataLoader(data, data.train, ["a"], "train", 1, 2, batch_size=4, num_workers=2, repeat=True)

    reference = []
    for batch in make():
        reference.append(batch.ids["row_id"].tolist())
        if len(reference) == 60:  # 22 batches per epoch: crosses two epoch boundaries
            break
    loader = make()
    for i, _ in enumerate(loader):
        if i == 30:
            break
    state = loader.state_dict()
    assert state == {"epoch": 1, "position": 9, "num_workers": 2}
    resumed = make()
    resumed.load_state_dict(state)
    rest = []
    for batch in resumed:
        rest.append(batch.ids["row_id"].tolist())
        if len(rest) == 29:
            break
    assert rest == reference[31:60]


def test_train_epoch_then_next_epoch(uneven_dir):
    data = data_config([str(uneven_dir)])
    loader = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=1)
    first = [b.ids["row_id"].tolist() for b in loader]
    assert loader.state_dict() == {"epoch": 1, "position": 0, "num_workers": 1}
    second = [b.ids["row_id"].tolist() for b in loader]
    assert len(first) == len(second) == 22 and first != second


def test_predict_without_label_columns(tmp_path):
    write_rows(tmp_path / "f.parquet", 0, 10, 10, label_a=pa.array(np.zeros(10, dtype=np.int64)))
    table_path = tmp_path / "nolabels.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(tmp_path / "f.parquet").drop_columns(["label_a", "label_b"]), table_path)
    (tmp_path / "f.parquet").unlink()
    data = data_config([str(table_path)])
    batch = next(iter(RecapDataLoader(data, data.train, ["a", "b"], "predict", batch_size=10)))
    assert torch.isnan(batch.labels).all() and (batch.weights == 0).all()
    check_rows(batch)


def test_nonfinite_continuous_values_are_counted(tmp_path):
    values = np.array([1.0, np.nan, np.inf, -np.inf, 5.0, np.nan])
    write_rows(tmp_path / "f.parquet", 0, 6, 6, scalar_cont=pa.array(values))
    data = data_config([str(tmp_path)])
    loader = RecapDataLoader(data, data.train, ["a"], "eval", batch_size=4, num_workers=1)
    batches = list(loader)
    assert loader.num_nonfinite == 4
    # Raw values reach the batch unchanged: featurization decides what NaN/inf become.
    assert torch.isnan(torch.cat([b.continuous[:, 3] for b in batches])).sum() == 2


def test_pin_memory_and_to_device(uneven_dir):
    data = data_config([str(uneven_dir)])
    batch = next(iter(RecapDataLoader(data, data.train, ["a"], "eval", batch_size=8)))
    moved = batch.to("cpu")
    assert torch.equal(moved.continuous, batch.continuous) and moved.ids["row_id"] is batch.ids["row_id"]


def test_globs_and_file_lists(uneven_dir):
    data = data_config([str(uneven_dir / "f0.parquet"), str(uneven_dir / "f[12].parquet")])
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 180


def test_interrupted_passes_with_persistent_workers(uneven_dir):
    data = data_config([str(uneven_dir)])
    reference = [b.ids["row_id"].tolist()
                 for b in RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=2)]
    loader = RecapDataLoader(data, data.train, ["a"], "train", batch_size=8, num_workers=2)
    head = []
    for batch in loader:  # a training loop that stops to evaluate, then goes on
        head.append(batch.ids["row_id"].tolist())
        if len(head) == 5:
            break
    tail = [b.ids["row_id"].tolist() for b in loader]
    assert head + tail == reference

    evaluation = RecapDataLoader(data, data.train, ["a"], "eval", batch_size=8, num_workers=2)
    full = [b.ids["row_id"].tolist() for b in evaluation]
    next(iter(evaluation))  # a partial pass (num_eval_steps) ...
    assert [b.ids["row_id"].tolist() for b in evaluation] == full  # ... does not move the next full one


def test_urls_local_and_fsspec(uneven_dir):
    data = data_config([f"file://{uneven_dir}"])
    assert RecapDataLoader(data, data.train, ["a"], "eval").num_rows == 180

    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    with memory.open("/recap-test/f0.parquet", "wb") as f:
        f.write((uneven_dir / "f0.parquet").read_bytes())
    data = data_config(["memory://recap-test"])
    rows = np.concatenate([b.ids["row_id"] for b in RecapDataLoader(data, data.train, ["a"], "eval")])
    assert sorted(rows.tolist()) == list(range(53))
