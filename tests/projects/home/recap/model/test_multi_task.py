"""MultiTaskRankingModel (model/multi_task.py): sparse ids of any value, tables on meta, parameter groups, the trace
torchrec's train pipelines need, a model without sparse features, non-finite values counted, history padding from
the batch and the history settings' checks."""

import sys
from pathlib import Path

import pytest
import torch

from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.model.synthetic_batch import random_batch

sys.path.insert(0, str(Path(__file__).parent))
from model_sections import ENCODERS, TOWERS, history_config  # noqa: E402


def test_sparse_ids_of_any_value_and_unused_sparse_columns(make_config):
    config = make_config()
    model = build_model(config)
    # Ids up to +-2**40 and negative, and an extra sparse column no table reads.
    batch = random_batch(config, 16, id_range=1 << 40)
    assert batch.sparse.keys() == ["user_id", "unused_ids", "hashtags"]
    pooled = model.embed_sparse(batch.sparse, 16)
    assert pooled.shape == (16, 7) and torch.isfinite(pooled).all()


def test_large_embeddings_on_meta(make_config):
    model = build_model(make_config(), sparse_device="meta")
    assert all(p.device.type == "meta" for p in model.large_embeddings.parameters())
    assert all(p.device.type == "cpu" for p in model.dense.parameters())


def test_dense_parameter_groups(make_config):
    config = make_config(
        {
            "multi_task_type": "share_all",
            "backbone": TOWERS["mlp"],
            "tasks": {"fav": TOWERS["dcn"], "fav_long": TOWERS["mlp"]},
        },
        overrides=["data.tasks.fav_long={label: label.fav_long}"],
    )
    model_and_loss = build_model_and_loss(config)
    groups = dense_parameter_groups(model_and_loss)
    assert set(groups) == {"shared", "fav", "fav_long"}
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    model = model_and_loss.model
    assert ids["fav"] == {id(p) for p in model.task_modules["fav"].parameters()}
    assert ids["fav_long"] == {id(p) for p in model.task_modules["fav_long"].parameters()}
    large = {id(p) for p in model.large_embeddings.parameters()}
    everything = {id(p) for p in model_and_loss.parameters()}
    assert ids["shared"] == everything - large - ids["fav"] - ids["fav_long"]
    assert {id(p) for p in model.dense.backbone.parameters()} <= ids["shared"]


def test_forward_traces_for_torchrec_train_pipelines(make_config):
    # torchrec's pipelines fx-trace the model with every sharding-free submodule as a leaf; the id transform must be
    # a leaf reading batch.sparse directly and feed the embedding collection, so both can be pipelined.
    from torchrec.distributed.train_pipeline.tracing import Tracer

    model_and_loss = build_model_and_loss(make_config())
    leaves = ["model.dense", "model.id_transform", "model.large_embeddings"]
    graph = Tracer(leaf_modules=leaves).trace(model_and_loss)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    assert set(calls) == set(leaves)
    sparse = calls["model.id_transform"].args[0]
    assert sparse.op == "call_function" and sparse.args[0].op == "placeholder" and sparse.args[1] == "sparse"
    assert calls["model.large_embeddings"].args[0] is calls["model.id_transform"]


def test_model_without_sparse_features(make_config):
    config = make_config({"large_embeddings": []}, overrides=["data.features.sparse=[]"])
    model_and_loss = build_model_and_loss(config)
    assert model_and_loss.model.large_embeddings is None
    batch = random_batch(config, 6)
    assert batch.sparse is None
    loss, out = model_and_loss(batch)
    assert out["logits"].shape == (6, 2)
    with_tables = build_model(make_config())
    with pytest.raises(ValueError, match="batch.sparse is None"):
        with_tables(batch)


def test_non_finite_values_are_counted(make_config):
    config = make_config()
    model = build_model(config)
    batch = random_batch(config, 8)
    expected = int((~torch.isfinite(batch.continuous)).sum())
    assert expected > 0
    model(batch)
    assert model.pop_non_finite_count() == expected
    assert model.pop_non_finite_count() == 0


def test_history_padding_and_candidate_come_from_the_batch(make_config):
    from common.history import pad_jagged

    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    padded = pad_jagged(values, torch.tensor([2, 0, 1, 1]), 3)
    assert padded[..., 0].tolist() == [[1, 2, 0], [0, 0, 0], [3, 0, 0], [4, 0, 0]]
    config = history_config(make_config, ENCODERS["pooling"])
    model = build_model(config)
    batch = random_batch(config, 5, torch.Generator().manual_seed(1))
    inputs = model.padded_histories(batch)
    assert inputs["history/mask"].sum(1).tolist() == batch.sequences["history"]["lengths"].tolist()
    assert inputs["history/continuous"].shape == (5, 6, 1) and inputs["history/candidate:hist_author"].shape == (5,)
    # A row whose items are all padding pools to 0, its candidate token stays.
    encoded = model.dense.histories["history"](inputs)
    empty = batch.sequences["history"]["lengths"] == 0
    assert empty.any() and encoded[empty, :32].abs().sum() == 0 and encoded[empty, 32:].abs().sum() > 0


@pytest.mark.parametrize("change, message", [
    ({"model.sequences": "{}"}, "has no model.sequences.history"),
    ({"model.sequences.history.tables": "{hist_author: {num_embeddings: 5}}"}, "must name exactly the group's id"),
    ({"model.sequences.history.num_actions": "null"}, "num_actions is needed"),
    ({"model.sequences.history.encoder": "{transformer: {num_heads: 3}}"}, "not a multiple of"),
])
def test_history_settings_are_checked(make_config, change, message):
    from core.config import ConfigError, load_config
    from projects.home.recap.schema import RecapConfig

    data = history_config(make_config, ENCODERS["pooling"]).model_dump(mode="json")
    with pytest.raises(ConfigError, match=message):
        load_config(None, RecapConfig, [f"{k}={v}" for k, v in change.items()], data=data)

