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
        (None, "not found; write it with `recap data stats`"),
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
