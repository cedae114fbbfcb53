"""Building the model from configs: the demo config, every featurization, and config errors as users meet them."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from common.featurization import ClipLog1pAbs, DoubleNormLog, Log1pAbs, ZScoreLog
from core.config import ConfigError
from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import load_recap_config

DEMO = Path(__file__).parents[5] / "projects/home/recap/config/demo.yaml"


def test_demo_config_builds_and_runs():
    config = load_recap_config(DEMO)
    model_and_loss = build_model_and_loss(config)
    loss, out = model_and_loss(random_batch(config, 8))
    assert out["logits"].shape == (8, 10) and torch.isfinite(loss)
    assert model_and_loss.task_names == list(config.model.tasks)


@pytest.mark.parametrize(
    "featurization, kind",
    [
        ({"double_norm_log": {"batch_norm": {"momentum": 0.2}, "layer_norm": False}}, DoubleNormLog),
        ({"log1p_abs": {}}, Log1pAbs),
        ({"clip_log1p_abs": {"clip_magnitude": 2.0}}, ClipLog1pAbs),
    ],
)
def test_featurizations(make_config, featurization, kind):
    config = make_config({"featurization": featurization})
    model = build_model(config)
    featurizer = model.dense.featurizer
    assert type(featurizer) is kind and featurizer.output_dim == 9
    assert model(random_batch(config, 4))["logits"].shape == (4, 2)
    if kind is DoubleNormLog:
        assert featurizer.batch_norm.momentum == 0.2 and isinstance(featurizer.layer_norm, torch.nn.Identity)
    if kind is ClipLog1pAbs:
        assert featurizer.clip_magnitude == 2.0


def test_dense_embeddings_without_layer_norm(make_config):
    model = build_model(make_config({"dense_embedding_layer_norm": False}))
    assert model.dense.dense_embeddings.norms is None
    assert len(build_model(make_config()).dense.dense_embeddings.norms) == 2


def _stats(path: Path, width: int, columns=("counts", "ratio")) -> Path:
    path.write_text(
        json.dumps(
            {
                "columns": list(columns),
                "mean": [0.5] * width,
                "std": [2.0] * width,
                "count": 10,
                "transform": "signed_log1p",
            }
        )
    )
    return path


def test_zscore_log_reads_data_stats(make_config, tmp_path):
    stats = _stats(tmp_path / "stats.json", 6)
    model = build_model(make_config({"featurization": {"zscore_log": {"stats_path": str(stats)}}}))
    featurizer = model.dense.featurizer
    assert isinstance(featurizer, ZScoreLog)
    torch.testing.assert_close(featurizer.mean, torch.full((6,), 0.5))
    torch.testing.assert_close(featurizer.inv_std, torch.full((6,), 0.5))
    per_value = _stats(tmp_path / "per_value.json", 6, [f"counts[{i}]" for i in range(5)] + ["ratio"])
    build_model(make_config({"featurization": {"zscore_log": {"stats_path": str(per_value)}}}))


@pytest.mark.parametrize(
    "write, message",
    [
        (None, "not found; write it with `recap data stats"),
        (lambda p: _stats(p, 5), "mean has 5 values but the feature schema has 6 continuous values"),
        (lambda p: _stats(p, 6, ["ratio", "counts"]), "do not match the schema's continuous columns"),
        (lambda p: p.write_text("{not json"), "is not valid JSON"),
    ],
)
def test_zscore_log_stats_errors_name_the_file(make_config, tmp_path, write, message):
    path = tmp_path / "stats.json"
    if write is not None:
        write(path)
    config = make_config({"featurization": {"zscore_log": {"stats_path": str(path)}}})
    with pytest.raises(ConfigError, match="stats_path") as info:
        build_model(config)
    assert str(path) in str(info.value) and message in str(info.value)


def _demo_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    edit(data["model"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _both_reduction_and_aggregation(model):
    model["backbone"]["mask_net_config"]["mask_blocks"][0]["aggregation_size"] = 8


def _task_without_label(model):
    model["tasks"]["is_liked"] = {"mlp_config": {"layer_sizes": [4]}}


def _share_all_without_backbone(model):
    del model["backbone"]


def _share_none_with_backbone(model):
    model["multi_task_type"] = "share_none"


def _dotted_task_name(model):
    model["tasks"]["is.favorited"] = model["tasks"].pop("is_favorited")


def _duplicate_table(model):
    model["large_embeddings"][1]["name"] = "user"


def _two_featurizations(model):
    model["featurization"]["log1p_abs"] = {}


def _stacked_and_parallel_dcn(model):
    model["backbone"] = {
        "dcn_config": {
            "poly_degree": 1,
            "stacked_mlp": {"layer_sizes": [4]},
            "parallel_mlp": {"layer_sizes": [4]},
        }
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _both_reduction_and_aggregation,
            "mask_blocks[0]: exactly one of reduction_factor, aggregation_size",
        ),
        (_task_without_label, "model.tasks ['is_liked'] have no label in data.tasks"),
        (_share_all_without_backbone, "multi_task_type share_all needs model.backbone"),
        (_share_none_with_backbone, "share_none takes no backbone"),
        (_dotted_task_name, "task names ['is.favorited'] must be letters, digits and underscores"),
        (_duplicate_table, "table names must be unique"),
        (_two_featurizations, "exactly one of double_norm_log, log1p_abs, clip_log1p_abs, zscore_log"),
        (_stacked_and_parallel_dcn, "at most one of stacked_mlp, parallel_mlp"),
    ],
)
def test_config_errors(tmp_path, edit, message):
    path = _demo_with(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_recap_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def _tower(model, task: str = "fav"):
    return model.dense.task_modules[task].tower


def _fav(tower: dict) -> dict:
    """Model keys giving the fav task `tower` (the report task keeps a small MLP)."""
    return {"tasks": {"fav": tower, "report": {"mlp_config": {"layer_sizes": [4]}}}}


def test_dcn_stacked_mlp_reads_the_cross_networks_output(make_config):
    config = make_config(_fav({"dcn_config": {"poly_degree": 1, "stacked_mlp": {"layer_sizes": [6, 3]}}}))
    tower = _tower(build_model(config))
    assert tower.parallel_mlp is None and tower.output_mlp is None
    assert tower.stacked_mlp.in_features == tower.cross_layers[0].weight.in_features
    assert [m.out_features for m in tower.stacked_mlp.layers if isinstance(m, torch.nn.Linear)] == [6, 3]
    assert tower.output_dim == 3
    assert build_model(config)(random_batch(config, 4))["logits"].shape == (4, 2)
    # One cross layer x1 = x0 * (W x0 + b) + x0, then the MLP on x1: relu(relu(x1 A^T + a) B^T + c) (its last
    # layer feeds the logit Linear, so it is a hidden layer too).
    x0 = torch.randn(5, tower.stacked_mlp.in_features)
    cross = tower.cross_layers[0].weight
    x1 = x0 * (x0 @ cross.weight.T + cross.bias) + x0
    first, _, last, _ = tower.stacked_mlp.layers
    expected = torch.relu(torch.relu(x1 @ first.weight.T + first.bias) @ last.weight.T + last.bias)
    torch.testing.assert_close(tower(x0)["output"], expected)


def test_batch_norm_without_affine_has_no_weight_or_bias(make_config):
    no_affine = {"momentum": 0.1, "affine": False}
    config = make_config({
        "featurization": {"double_norm_log": {"batch_norm": no_affine}},
        **_fav({"mlp_config": {"layer_sizes": [8, 4], "batch_norm": no_affine}}),
    })
    model = build_model(config)
    norms = [model.dense.featurizer.batch_norm] + [
        m for m in _tower(model).layers if isinstance(m, torch.nn.BatchNorm1d)
    ]
    assert len(norms) == 3 and all(isinstance(n, torch.nn.BatchNorm1d) for n in norms)
    for norm in norms:
        assert norm.affine is False and norm.weight is None and norm.bias is None
        assert not list(norm.parameters())
    affine = build_model(make_config(_fav({"mlp_config": {"layer_sizes": [8, 4], "batch_norm": {}}})))
    assert all(n.weight is not None for n in affine.modules() if isinstance(n, torch.nn.BatchNorm1d))


def _mask_net(block: dict | None = None, **net) -> dict:
    blocks = [{"output_size": 4, "aggregation_size": 3, **(block or {})}, {"output_size": 5, "aggregation_size": 3}]
    return _fav({"mask_net_config": {"mask_blocks": blocks, **net}})


def _mlp(**mlp) -> dict:
    return _fav({"mlp_config": {"layer_sizes": [8, 4], **mlp}})


def _dcn(**dcn) -> dict:
    return _fav({"dcn_config": {"poly_degree": 2, **dcn}})


def _layers(module, kind) -> list:
    return [m for m in module.modules() if isinstance(m, kind)]


FACTORY_WIRING = {
    "double_norm_log.clip_magnitude, batch_norm null": (
        {"featurization": {"double_norm_log": {"clip_magnitude": 2.5, "batch_norm": None}}},
        lambda m: (m.dense.featurizer.clip_magnitude, type(m.dense.featurizer.batch_norm)),
        (2.5, torch.nn.Identity),
    ),
    "zscore_log.clip_magnitude": (
        {"featurization": {"zscore_log": {"stats_path": "{stats}", "clip_magnitude": 3.0}}},
        lambda m: m.dense.featurizer.clip_magnitude,
        3.0,
    ),
    "zscore_log.clip_magnitude null": (
        {"featurization": {"zscore_log": {"stats_path": "{stats}", "clip_magnitude": None}}},
        lambda m: m.dense.featurizer.clip_magnitude,
        None,
    ),
    "mlp_config.dropout": (
        _mlp(dropout=0.25), lambda m: [d.p for d in _layers(_tower(m), torch.nn.Dropout)], [0.25, 0.25]
    ),
    "mlp_config.layer_sizes are hidden layers": (
        _mlp(), lambda m: type(_tower(m).layers[-1]), torch.nn.ReLU
    ),
    "mlp_config.batch_norm.momentum": (
        _mlp(batch_norm={"momentum": 0.3}),
        lambda m: [b.momentum for b in _layers(_tower(m), torch.nn.BatchNorm1d)],
        [0.3, 0.3],
    ),
    "dcn_config.projection_dim": (
        _dcn(projection_dim=2),
        lambda m: [layer.weight[0].out_features for layer in _tower(m).cross_layers],
        [2, 2],
    ),
    "dcn_config.output_mlp": (
        # The cross network keeps the input width: 9 featurized + 7 dense embedding + 5 small + 2 position + 7 pooled.
        _dcn(output_mlp={"layer_sizes": [5, 3]}),
        lambda m: (_tower(m).output_mlp.in_features, _tower(m).output_dim,
                   m.dense.task_modules["fav"].final_logit.in_features),
        (30, 3, 3),
    ),
    "mask_blocks[].activation": (
        _mask_net({"activation": "gelu"}), lambda m: [type(b.activation) for b in _tower(m).blocks],
        [torch.nn.GELU, torch.nn.ReLU],
    ),
    "mask_blocks[].input_layer_norm": (
        _mask_net({"input_layer_norm": False}), lambda m: [type(b.input_layer_norm) for b in _tower(m).blocks],
        [torch.nn.Identity, torch.nn.LayerNorm],
    ),
    "mask_net_config.use_parallel": (
        # In series the second block reads the first block's 4 outputs; the output is the last block's.
        _mask_net(use_parallel=False),
        lambda m: (_tower(m).parallel, _tower(m).blocks[1].hidden.in_features, _tower(m).output_dim),
        (False, 4, 5),
    ),
    "mask_net_config.mlp": (
        _mask_net(mlp={"layer_sizes": [6, 2]}),
        lambda m: (_tower(m).mlp.in_features, _tower(m).output_dim),
        (9, 2),
    ),
    "position_debias.drop_probability, num_positions": (
        {"position_debias": {"feature": "position", "num_positions": 7, "embedding_dim": 2, "drop_probability": 0.2}},
        lambda m: (m.dense.position_debias.drop_probability, m.dense.position_debias.embedding.num_embeddings),
        (0.2, 8),
    ),
    "small_embeddings[].num_embeddings": (
        {"small_embeddings": [{"feature": "country", "num_embeddings": 9, "embedding_dim": 3}]},
        lambda m: [t.num_embeddings for t in m.dense.small_embeddings.tables],
        [9],
    ),
}


@pytest.mark.parametrize("model, read, expected", FACTORY_WIRING.values(), ids=FACTORY_WIRING.keys())
def test_config_values_reach_the_built_modules(make_config, tmp_path, model, read, expected):
    stats = str(_stats(tmp_path / "stats.json", 6))
    text = json.dumps(model).replace("{stats}", stats)
    config = make_config(json.loads(text))
    built = build_model(config)
    assert read(built) == expected
    assert built(random_batch(config, 4))["logits"].shape == (4, 2)
