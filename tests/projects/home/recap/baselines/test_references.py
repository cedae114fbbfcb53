"""The plain references: the arrays they read from our config's splits, the model's shapes and padding, and that
the plain model learns the small data in a few epochs while the peer keeps its best validation epoch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from projects.home.recap.baselines.arrays import SplitArrays, _scalar_ids, load_reference_data
from projects.home.recap.baselines.datasets import DEFAULT_CONFIGS
from projects.home.recap.baselines.plain_model import EMBEDDING_DIM, PlainSharedBottom
from projects.home.recap.baselines.references import ReferenceSettings, train_references
from projects.home.recap.baselines.small_data import CONTINUOUS, generate_small
from projects.home.recap.data.errors import DataError
from projects.home.recap.schema import load_recap_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("small")
    generate_small(directory, 20_000, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECAP_DATA_DIR", str(directory))
        config = load_recap_config(DEFAULT_CONFIGS["small"])
    return load_reference_data(config)


def test_arrays_follow_the_config(data):
    assert data.categorical_names == ["user_id", "item_id", "item_category", "user_segment", "hour_of_day"]
    assert data.bag_names == ["item_tags"] and data.continuous_names == list(CONTINUOUS)
    assert data.tasks == ["click", "purchase"]
    assert (len(data.train), len(data.validation), len(data.test)) == (16_000, 2_000, 2_000)
    assert data.categorical_sizes[:2] <= [1_000, 2_000] and data.categorical_sizes[4] <= 24
    # Standardised with the train split's statistics: train is centred and scaled, the others only close to it.
    assert np.allclose(data.train.continuous.mean(0), 0, atol=1e-4)
    assert np.allclose(data.train.continuous.std(0), 1, atol=1e-3)
    assert np.abs(data.test.continuous.mean(0)).max() < 0.2
    # Tags: 1-5 real ids per row, the rest padded with the table's last row.
    pad = data.bag_sizes[0] - 1
    real = (data.train.bags[0] != pad).sum(1)
    assert data.train.bags[0].shape[1] == 5 and real.min() == 1 and real.max() == 5
    assert data.test.oracle is not None and data.test.oracle.shape == (2_000, 2)


def test_plain_model_shapes_init_and_padding():
    torch.manual_seed(0)
    model = PlainSharedBottom([10, 7], [6], num_continuous=3, num_tasks=2)
    assert all(t.weight.std() < 1e-3 for t in model.embeddings)
    categorical = torch.tensor([[1, 2], [3, 4], [9, 6]])
    continuous = torch.randn(3, 3)
    one_tag = torch.tensor([[2, 5, 5], [1, 5, 5], [0, 5, 5]])
    assert model(categorical, [one_tag], continuous).shape == (3, 2)
    # The pad row adds nothing to a bag and is not trained.
    assert torch.equal(model.bags[0](one_tag), model.bags[0](one_tag[:, :1]))
    model(categorical, [one_tag], continuous).sum().backward()
    assert torch.count_nonzero(model.bags[0].weight.grad[5]) == 0
    width = model.bottom[0].in_features
    assert width == EMBEDDING_DIM * 3 + 3


def test_plain_learns_and_peer_keeps_its_best_epoch(data):
    results = train_references(data, ReferenceSettings(plain_epochs=2, peer_max_epochs=3, patience=1, seed=0))
    plain, peer = results["plain"], results["peer"]
    assert plain.epochs_trained == plain.chosen_epoch == 2
    for task in ("click", "purchase"):
        assert plain.tasks[task]["auc"] > 0.6, task
        assert plain.tasks[task]["oracle"]["auc"] > plain.tasks[task]["auc"]
        assert set(plain.tasks[task]) >= {"auc", "rce", "logloss", "pos_rate", "rows"}
    assert len(peer.validation_auc) == peer.epochs_trained <= 3
    assert peer.validation_auc[peer.chosen_epoch - 1] == max(peer.validation_auc)
    assert peer.tasks["click"]["rows"] == 2_000


def test_references_are_deterministic(data):
    head = SplitArrays(data.train.categorical[:4_000], [b[:4_000] for b in data.train.bags],
                       data.train.continuous[:4_000], data.train.labels[:4_000], None)
    fewer = dataclasses.replace(data, train=head)
    settings = ReferenceSettings(plain_epochs=1, peer_max_epochs=1, patience=1, seed=4)
    first, second = train_references(fewer, settings), train_references(fewer, settings)
    assert first["plain"].tasks["click"]["auc"] == second["plain"].tasks["click"]["auc"]
    assert first["peer"].tasks["purchase"]["logloss"] == second["peer"].tasks["purchase"]["logloss"]


def test_one_id_list_columns_read_as_categorical_ids():
    # A sparse column written as one-id lists (as `recap data generate` writes user_id), empty and null rows as id 0.
    lists = pa.array([[3], [], None, [7]], pa.list_(pa.field("element", pa.int64(), nullable=False)))
    assert _scalar_ids(pa.table({"user_id": lists}), "user_id", "file.parquet").tolist() == [3, 0, 0, 7]
    with pytest.raises(DataError, match="file.parquet.*'user_id'.*negative id"):
        _scalar_ids(pa.table({"user_id": pa.array([[-1]])}), "user_id", "file.parquet")
