"""recap tune's search-space file: errors that name the key, before any trial; sampled values as --set strings."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from core.config import ConfigError, apply_overrides
from projects.home.recap.main import main
from projects.home.recap.schema import load_recap_config
from projects.home.recap.tune.space import (
    SearchSpace,
    check_space,
    load_space,
    overrides_for,
    resolve_base,
    yaml_value,
)

DEMO = Path(__file__).resolve().parents[5] / "projects/home/recap/config/demo.yaml"
CENSUS_TUNE = DEMO.parent / "census_tune.yaml"
LR = "optimizer.dense.learning_rate.linear_ramp_to_cosine.learning_rate"
GOOD = {LR: {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def write_space(tmp_path: Path, **fields) -> Path:
    space = {"base": str(DEMO), "parameters": GOOD, **fields}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.mark.parametrize(("fields", "expected"), [
    ({"parameters": {"model.backbone.mask_net_config.mlp.dropuot": {"type": "float", "low": 0.1, "high": 0.5}}},
     "parameters.model.backbone.mask_net_config.mlp.dropuot: "),
    ({"parameters": {"data.batch_size": {"type": "int", "low": 512, "high": 64}}},
     "parameters.data.batch_size: low (512) must be below high (64)"),
    ({"parameters": {"data.batch_size": {"type": "integer", "low": 64, "high": 512}}},
     "parameters.data.batch_size.type: "),
    ({"parameters": {"data.batch_size": {"type": "int", "low": 64.5, "high": 512}}},
     "parameters.data.batch_size: low of an int parameter must be a whole number"),
    ({"parameters": {"optimizer.dense.adam.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
     "parameters.optimizer.dense.adam.lr: log: true needs low > 0"),
    ({"parameters": {"data.batch_size": {"type": "categorical", "choices": []}}},
     "parameters.data.batch_size: a categorical parameter needs a non-empty list of `choices`"),
    ({"parameters": {"data.batch_size": {"type": "categorical", "choices": [64], "low": 1}}},
     "parameters.data.batch_size: a categorical parameter takes only `choices`"),
    ({"parameters": {"model.large_embeddings.7.num_embeddings": {"type": "int", "low": 10, "high": 20}}},
     # The rest of the message is --set's own.
     "parameters.model.large_embeddings.7.num_embeddings: --set model.large_embeddings.7.num_embeddings: "),
    ({"parameters": {"data.batch_size.per_rank": {"type": "int", "low": 10, "high": 20}}},
     "parameters.data.batch_size.per_rank: --set data.batch_size.per_rank: "),
    ({"fixed": {"training.num_epoch": 1}}, "fixed.training.num_epoch: "),
    ({"metric": {"name": "auc", "task": "is_liked"}}, "metric.task: 'is_liked' is not a task of"),
    ({"metric": {"name": "auc", "dataset": "test"}}, "metric.dataset: 'test' is not in"),
    ({"metric": {"name": "ndcg"}}, "metric.name: "),
    ({"fixed": {"training.eval_every_n": None, "training.num_eval_steps": None}}, "training.eval_every_n is not set"),
    ({"parameters": {"data.batch_size": {"type": "int", "low": 8, "high": 64}}, "fixed": {"data.batch_size": 8}},
     "data.batch_size: both in `fixed` and in `parameters`"),
])
def test_bad_space_is_a_config_error_naming_the_key(tmp_path, capsys, fields, expected):
    path = write_space(tmp_path, **fields)
    assert main(["tune", "--space", str(path), "--output", str(tmp_path / "tune")]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert str(path) in err
    assert not (tmp_path / "tune").exists()  # caught before any trial, before the study is created


def test_unknown_key_suggests_the_near_one(tmp_path):
    path = write_space(tmp_path, parameters={"model.backbone.mask_net_config.mlp.dropuot": GOOD[LR]})
    space = load_space(path)
    with pytest.raises(ConfigError, match="did you mean 'model.backbone.mask_net_config.mlp.dropout'"):
        check_space(space, path, resolve_base(space, path, None))


def test_a_key_under_an_unset_section_must_be_set_first(tmp_path):
    # demo.yaml trains with adam: adamw is an unset member of the optimizer's one-of group.
    path = write_space(tmp_path, parameters={"optimizer.dense.adamw.weight_decay": {"type": "float", "low": 0.0,
                                                                                      "high": 0.1}})
    space = load_space(path)
    with pytest.raises(ConfigError, match="optimizer.dense.adamw is not set there"):
        check_space(space, path, DEMO)
    fixed = {"optimizer.dense.adam": None, "optimizer.dense.adamw": {"weight_decay": 0.01}}
    path = write_space(tmp_path, fixed=fixed,
                       parameters={"optimizer.dense.adamw.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}})
    check_space(load_space(path), path, DEMO)


def test_base_is_relative_to_the_space_file_and_config_wins(tmp_path):
    space = load_space(CENSUS_TUNE)
    assert resolve_base(space, CENSUS_TUNE, None) == CENSUS_TUNE.parent / "census.yaml"
    assert resolve_base(space, CENSUS_TUNE, str(DEMO)) == DEMO
    with pytest.raises(ConfigError, match="--config: .*nope.yaml not found"):
        resolve_base(space, CENSUS_TUNE, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="no base config"):
        resolve_base(SearchSpace(parameters=GOOD), tmp_path / "s.yaml", None)


def test_shipped_census_space_checks_against_census_yaml():
    space = load_space(CENSUS_TUNE)
    config = check_space(space, CENSUS_TUNE, resolve_base(space, CENSUS_TUNE, None))
    assert space.resolved_direction == "maximize"
    assert config.training.eval_every_n == space.fixed["training.eval_every_n"]


@pytest.mark.parametrize("value", ["512", "yes", "null", "a=b: c", "1e-3", "", 1e-4, 3.0e-12, 0.1, 7, True, None,
                                   [128, 64], {"adam": {"lr": 0.01}}, ["x", "1"]])
def test_yaml_value_is_read_back_by_set(value):
    assert apply_overrides({}, [f"key={yaml_value(value)}"])["key"] == value


def test_sampled_values_become_valid_set_strings():
    space = SearchSpace(parameters={
        LR: {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "model.backbone.mask_net_config.mlp.dropout": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1},
        "model.large_embeddings.0.embedding_dim": {"type": "int", "low": 4, "high": 64, "log": True},
        "model.large_embeddings.1.embedding_dim": {"type": "int", "low": 4, "high": 32, "step": 4},
        "data.batch_size": {"type": "categorical", "choices": [32, 64]},
        "model.tasks.is_favorited.mlp_config.layer_sizes": {"type": "categorical", "choices": [[8], [16, 8]]},
        "model.backbone.mask_net_config.mlp.batch_norm": {"type": "categorical", "choices": [None, {}]},
    })
    check_space(space, "space", DEMO)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_lists = set()
    for _ in range(12):
        trial = study.ask()
        values = {k: p.config_value(p.suggest(trial, k)) for k, p in space.parameters.items()}
        overrides = overrides_for(values)
        assert all(o.count("=") >= 1 and o.split("=", 1)[0] in space.parameters for o in overrides)
        # Read back by --set exactly, and accepted by the experiment's schema.
        config = load_recap_config(DEMO, overrides).model_dump(mode="json")
        assert config["optimizer"]["dense"]["learning_rate"]["linear_ramp_to_cosine"]["learning_rate"] == values[LR]
        assert config["model"]["tasks"]["is_favorited"]["mlp_config"]["layer_sizes"] == values[
            "model.tasks.is_favorited.mlp_config.layer_sizes"]
        assert config["model"]["large_embeddings"][1]["embedding_dim"] % 4 == 0
        assert round(values["model.backbone.mask_net_config.mlp.dropout"] * 10, 9).is_integer()
        seen_lists.add(str(values["model.tasks.is_favorited.mlp_config.layer_sizes"]))
        study.tell(trial, 0.0)
    assert seen_lists == {"[8]", "[16, 8]"}
