"""`--run SAVE_DIR` for evaluate, predict and export: a run trained with --set overrides is scored with its own
resolved config, without repeating them; with only the experiment YAML the refusal says how."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402


@pytest.mark.slow
def test_a_run_trained_with_overrides_is_scored_through_run(tmp_path):
    data = helpers.make_data(tmp_path / "data")
    run = tmp_path / "run"
    changed = "model.large_embeddings.0.embedding_dim=8"  # differs from demo.yaml
    train = helpers.recap("train", "--config", str(helpers.DEMO),
                          *helpers.set_args(helpers.overrides(data, run, 4) + [changed]))
    assert train.returncode == 0, train.stderr[-3000:]
    data_only = [o for o in helpers.overrides(data, run, 4) if o.startswith("data.")]

    refused = helpers.recap("evaluate", "--config", str(helpers.DEMO), "--checkpoint", str(run),
                            "--dataset", "validation", *helpers.set_args(data_only))
    assert refused.returncode == 1
    assert "does not fit this run's model" in refused.stderr and "--run SAVE_DIR" in refused.stderr

    evaluated = helpers.recap("evaluate", "--run", str(run), "--dataset", "validation")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (run / "eval" / "validation" / "step_4" / "metrics.json").is_file()

    scored = helpers.recap("predict", "--run", str(run), "--input", str(data / "test"), "--output",
                           str(tmp_path / "scores"))
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert list((tmp_path / "scores").glob("part-*.parquet"))

    exported = helpers.recap("export", "--run", str(run), "--output", str(tmp_path / "serving"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "serving" / "model.pt2").is_file()


def test_run_and_config_are_alternatives_and_config_needs_a_checkpoint(tmp_path):
    both = helpers.recap("predict", "--config", "x.yaml", "--run", str(tmp_path), "--input", "a", "--output", "b")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = helpers.recap("export", "--run", str(tmp_path), "--output", str(tmp_path / "o"))
    assert missing.returncode != 0 and f"--run {tmp_path}: no config.yaml there" in missing.stderr
    no_checkpoint = helpers.recap("export", "--config", str(helpers.DEMO), "--output", str(tmp_path / "o"))
    assert no_checkpoint.returncode != 0 and "--checkpoint is required with --config" in no_checkpoint.stderr
