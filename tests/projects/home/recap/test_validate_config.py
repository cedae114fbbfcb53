"""`recap validate-config` and the recap schema's cross-section checks, as a user meets them."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError
from projects.home.recap.main import main
from projects.home.recap.schema import load_recap_config

DEMO = Path(__file__).parents[4] / "projects/home/recap/config/demo.yaml"


def test_valid_file_prints_resolved_yaml(capsys):
    assert main(["validate-config", str(DEMO)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    # Defaults are filled in.
    assert resolved["data"]["tasks"]["is_favorited"]["pos_rate"] == 1.0
    assert resolved["training"]["keep_last_k"] == 3


def test_misspelt_key_exits_1_with_suggestion(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("    is_favorited: {mlp_config: {layer_sizes:", "    is_favorited: {mlp_config: {layer_size:"))
    assert main(["validate-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "model.tasks.is_favorited.mlp_config.layer_size: unknown key" in err
    assert "did you mean 'model.tasks.is_favorited.mlp_config.layer_sizes'?" in err


def test_missing_required_key_named(tmp_path, capsys):
    data = yaml.safe_load(DEMO.read_text())
    del data["training"]["save_dir"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate-config", str(bad)]) == 1
    assert "training.save_dir: missing required key" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).with_name("recap")
    out = subprocess.run([str(exe), "validate-config", str(DEMO), "--set", "training.num_epochs=oops"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "training.num_epochs" in out.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.tasks.is_liked={mlp_config: {layer_sizes: [4]}}", "have no label in data.tasks"),
        ("model.multi_task_type=share_none", "share_none takes no backbone"),
        # Both members of a group set in one command (one alone replaces the file's member: tests/core/test_config.py).
        (["model.backbone.mask_net_config.mask_blocks.0.aggregation_size=8",
          "model.backbone.mask_net_config.mask_blocks.0.reduction_factor=2"], "exactly one of reduction_factor"),
        (["optimizer.dense.multi_task_learning_rates={tower_learning_rates: {is_favorited: {constant: 0.1}}, "
          "backbone_learning_rate: {constant: 0.1}}", "optimizer.dense.learning_rate={constant: 0.1}"],
         "at most one of learning_rate"),
        ("evaluation.stratifiers=[user_id]", "not a scalar discrete column"),
    ],
)
def test_cross_section_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recap_config(DEMO, override if isinstance(override, list) else [override])


def test_share_all_without_backbone():
    with pytest.raises(ConfigError, match="share_all needs model.backbone"):
        load_recap_config(DEMO, ["model.backbone=null"])


def test_tower_learning_rates_must_match_tasks(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["optimizer"]["dense"].pop("learning_rate")
    data["optimizer"]["dense"]["multi_task_learning_rates"] = {
        "tower_learning_rates": {"is_favorited": {"constant": 0.1}},
        "backbone_learning_rate": {"constant": 0.1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="must name exactly the model's tasks"):
        load_recap_config(path)


def test_periodic_evaluation_needs_a_validation_set():
    no_validation = ["data.validation={}", "evaluation.datasets=[]"]
    with pytest.raises(ConfigError, match=r"training.eval_every_n is 500 but data.validation is empty"):
        load_recap_config(DEMO, no_validation)
    config = load_recap_config(DEMO, [*no_validation, "training.eval_every_n=null", "training.num_eval_steps=null",
                                      "training.eval_datasets=[]"])
    assert config.data.validation == {} and config.training.eval_every_n is None


def test_num_eval_steps_needs_eval_every_n():
    with pytest.raises(ConfigError, match=r"training.num_eval_steps is 20 but training.eval_every_n is null"):
        load_recap_config(DEMO, ["training.eval_every_n=null"])
    assert load_recap_config(DEMO, ["training.eval_every_n=null", "training.num_eval_steps=null"])


@pytest.mark.parametrize("name", ["demo", "census", "recap_scale", "ids"])
def test_shipped_configs_load(name):
    config = load_recap_config(DEMO.with_name(f"{name}.yaml"))
    assert config.training.eval_every_n is None or config.data.validation


def test_a_single_path_string_is_a_list_of_one_path():
    config = load_recap_config(DEMO, ["data.train.paths=/data/train", "data.validation.test.paths=gs://b/test"])
    assert config.data.train.paths == ["/data/train"]
    assert config.data.validation["test"].paths == ["gs://b/test"]


def test_sparse_epsilon_with_sgd_is_rejected_in_the_experiment():
    with pytest.raises(ConfigError, match=r"optimizer.sparse: epsilon is meaningless for type sgd"):
        load_recap_config(DEMO, ["optimizer.sparse={type: sgd, epsilon: 1.0e-6}"])
    assert load_recap_config(DEMO, ["optimizer.sparse={type: sgd}"]).optimizer.sparse.epsilon is None


def test_periodic_evaluation_sets_must_be_validation_sets():
    load_recap_config(DEMO, ["training.eval_datasets=[validation, test]"])
    with pytest.raises(ConfigError, match="training.eval_datasets: 'tset' is not in data.validation"):
        load_recap_config(DEMO, ["training.eval_datasets=[tset]"])


def test_check_builds_the_model_and_checks_every_dataset_against_the_schema(tmp_path, capsys):
    import pyarrow.parquet as pq

    from projects.home.recap.data.synthetic import generate

    generate(tmp_path / "data", 600, seed=0, rows_per_file=300)
    paths = [f"data.train.paths=[{tmp_path}/data/train]",
             f"data.validation.validation.paths=[{tmp_path}/data/validation]",
             f"data.validation.test.paths=[{tmp_path}/data/test]"]
    args = ["validate-config", str(DEMO), "--check"] + [a for p in paths for a in ("--set", p)]
    assert main(args) == 0
    assert "3 dataset(s) match the schema" in capsys.readouterr().err

    broken = next((tmp_path / "data" / "test").glob("*.parquet"))
    table = pq.read_table(broken)
    pq.write_table(table.drop_columns(["author_id"]), broken)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "data.validation.test" in err and "author_id" in err and broken.name in err


def test_table_placement_settings_are_checked(capsys):
    with pytest.raises(ConfigError, match="data_parallel tables compute with the dense kernel, not fused"):
        load_recap_config(DEMO, ["model.large_embeddings.0.sharding=data_parallel",
                                 "model.large_embeddings.0.compute_kernel=fused"])
    with pytest.raises(ConfigError, match="exactly one of uniform_bound, normal_std"):
        load_recap_config(DEMO, ["model.large_embeddings.0.init={uniform_bound: 0.1, normal_std: 0.1}"])
    # Adam on CPU runs only for data-parallel tables: a table pinned to table_wise cannot train with it.
    pinned = ["--set", "training.device=cpu", "--set", "optimizer.sparse={type: adam}",
              "--set", "model.large_embeddings.2.sharding=table_wise"]
    assert main(["validate-config", str(DEMO), "--check", *pinned]) != 0
    assert ("large embedding table 'hashtag': table_wise updates the table inside fbgemm's fused kernel, and "
            "fbgemm's CPU kernels have no Adam") in capsys.readouterr().err


def test_a_large_table_kept_data_parallel_is_named_in_a_warning(caplog):
    from projects.home.recap.model.tables import table_constraints

    config = load_recap_config(DEMO, ["optimizer.sparse={type: adam}", "model.large_embeddings.0.num_embeddings=1000000"])
    with caplog.at_level("WARNING"):
        constraints = table_constraints(config, "cpu")
    assert constraints["user"].sharding_types == ["data_parallel"]
    assert "'user' (1000000 x 16) is kept data_parallel because fbgemm's CPU kernels have no Adam" in caplog.text
    assert "'author'" not in caplog.text  # 50,000 x 16 is small enough to replicate without a word
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert table_constraints(config, "cuda")["user"].sharding_types != ["data_parallel"]
    assert caplog.text == ""


def test_the_removed_final_layer_activation_is_an_error_naming_the_key():
    # Every size is a hidden layer now: batch_norm and dropout act on a one-size Mlp too, and the old switch that
    # left the last layer linear is refused by name.
    with pytest.raises(ConfigError, match=r"model.tasks.is_favorited.mlp_config: .*final_layer_activation was "
                                          r"removed"):
        load_recap_config(DEMO, ["model.tasks.is_favorited.mlp_config={layer_sizes: [64], "
                                 "final_layer_activation: false}"])
    load_recap_config(DEMO, ["model.tasks.is_favorited.mlp_config={layer_sizes: [64], batch_norm: {}, dropout: 0.1}"])
    load_recap_config(DEMO, ["model.tasks.is_favorited.mlp_config={layer_sizes: [128, 64], dropout: 0.1}"])
