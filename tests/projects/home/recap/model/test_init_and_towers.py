"""Every embedding table's initial weights come from model.embedding_init or its own `init`; every configured Mlp
layer is a hidden layer, so no tower or backbone is silently linear."""

import pytest
import torch

from core.config import ConfigError
from projects.home.recap.model.factory import build_model, large_table_specs
from projects.home.recap.model.synthetic_batch import random_batch


def _std(weight: torch.Tensor) -> float:
    return float(weight.detach().float().std())


def test_default_init_is_small_normal_on_every_table(make_config):
    config = make_config()
    model = build_model(config)
    dense = model.dense
    for table in dense.small_embeddings.tables:
        assert _std(table.weight) < 0.03  # nn.Embedding's own default would be N(0, 1)
    assert _std(dense.position_debias.embedding.weight) < 0.03
    assert {spec.init for spec in large_table_specs(config)} == {("normal", 0.01)}


def test_per_table_init_overrides_the_model_default(make_config):
    config = make_config({
        "embedding_init": {"uniform_bound": 0.5},
        "small_embeddings": [
            {"feature": "country", "num_embeddings": 50, "embedding_dim": 30, "init": {"normal_std": 2.0}},
            {"feature": "hour", "num_embeddings": 240, "embedding_dim": 20},
        ],
    })
    model = build_model(config)
    country, hour = model.dense.small_embeddings.tables
    assert 1.5 < _std(country.weight) < 2.5
    assert float(hour.weight.detach().abs().max()) <= 0.5 and _std(hour.weight) > 0.2
    assert {spec.init for spec in large_table_specs(config)} == {("uniform", 0.5)}


def test_null_embedding_init_keeps_each_kinds_default(make_config):
    config = make_config({"embedding_init": None})
    model = build_model(config)
    assert _std(model.dense.small_embeddings.tables[1].weight) > 0.5  # nn.Embedding's N(0, 1)
    assert {spec.init for spec in large_table_specs(config)} == {None}  # torchrec's uniform


def test_final_layer_activation_is_an_error_naming_the_key(make_config):
    with pytest.raises(ConfigError, match="final_layer_activation was removed"):
        make_config({"tasks": {"fav": {"mlp_config": {"layer_sizes": [8], "final_layer_activation": False}},
                               "report": {"mlp_config": {"layer_sizes": [4]}}}})


def test_one_size_tower_is_a_hidden_layer_with_batch_norm_and_dropout(make_config):
    config = make_config({"tasks": {
        "fav": {"mlp_config": {"layer_sizes": [8], "batch_norm": {}, "dropout": 0.1}},
        "report": {"mlp_config": {"layer_sizes": [4]}},
    }})
    model = build_model(config)
    kinds = [type(m) for m in model.dense.task_modules["fav"].tower.layers]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Dropout]
    assert model(random_batch(config, 4))["logits"].shape == (4, 2)


def test_no_tower_output_reaches_the_logit_linearly(make_config):
    # The logit is not an affine function of the input: the tower's last layer is rectified.
    config = make_config({"tasks": {"fav": {"mlp_config": {"layer_sizes": [8]}},
                                    "report": {"mlp_config": {"layer_sizes": [4]}}}})
    tower = build_model(config).dense.task_modules["fav"].tower
    x = torch.randn(64, tower.in_features)
    out = tower(x)["output"]
    assert (out >= 0).all() and (out == 0).any()
