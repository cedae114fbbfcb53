"""training.early_stopping on the recap model: config errors name the key; a run marks its best checkpoint, and
evaluate / export pick it by default (saying so), while checkpoints/latest still names the newest."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from projects.home.recap.schema import load_recap_config  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return helpers.make_data(tmp_path_factory.mktemp("data"))


def _load(data_dir, tmp_path, *extra: str):
    values = helpers.overrides(data_dir, tmp_path, 20, eval_every_n=5, eval_datasets="[validation]")
    return load_recap_config(helpers.DEMO, [*values, *extra])


@pytest.mark.parametrize("override, message", [
    ("training.eval_every_n=null", "needs the periodic evaluation"),
    ("training.early_stopping.task=is_liked", "'is_liked' is not one of"),
    ("training.early_stopping.dataset=test", "'test' is not evaluated during training"),
    ("training.early_stopping.metric=ndcg", "ndcg_k 10"),
])
def test_config_errors_name_the_key(data_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _load(data_dir, tmp_path, "training.early_stopping={patience: 2}", "evaluation.ndcg_k=[5]", override)


def test_defaults_fill_in_the_dataset(data_dir, tmp_path):
    config = _load(data_dir, tmp_path, "training.early_stopping={}")
    stopping = config.training.early_stopping
    assert (stopping.metric, stopping.task, stopping.dataset, stopping.patience) == ("auc", "mean", "validation", 3)


@pytest.mark.slow
def test_the_best_checkpoint_is_what_evaluate_and_export_use(data_dir, tmp_path):
    from projects.home.recap.train import train

    save_dir = tmp_path / "run"
    # min_delta above any change of the loss: the first evaluation stays the best, unlike the last checkpoint.
    config = _load(data_dir, save_dir, "training.early_stopping={metric: loss, patience: null, min_delta: 100}",
                   "training.keep_last_k=1")
    ctx = init_distributed("cpu")
    try:
        result = train(config, ctx)
    finally:
        shutdown_distributed()
    record = json.loads((save_dir / "checkpoints" / "best.json").read_text())
    history = dict((step, value) for step, value in record["history"])
    assert sorted(history) == [5, 10, 15, 20]
    best = 5
    assert record["best_step"] == best and result.step == 20 and record["best_value"] == history[5]
    assert {c.step for c in list_checkpoints(save_dir / "checkpoints")} == {best, 20}

    done = helpers.recap("evaluate", "--run", str(save_dir), "--dataset", "validation")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"using the best checkpoint {save_dir / 'checkpoints' / f'step_{best:08d}'}" in done.stderr
    evaluated = json.loads((save_dir / "eval" / "validation" / f"step_{best}" / "metrics.json").read_text())
    assert evaluated["checkpoint"].endswith(f"step_{best:08d}")
    exported = helpers.recap("export", "--run", str(save_dir), "--output", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "using the best checkpoint" in exported.stderr
    latest = helpers.recap("evaluate", "--run", str(save_dir), "--dataset", "validation",
                           "--checkpoint", str(save_dir / "checkpoints" / "latest"))
    assert latest.returncode == 0, latest.stderr[-3000:]
    evaluated = json.loads((save_dir / "eval" / "validation" / "step_20" / "metrics.json").read_text())
    assert evaluated["checkpoint"].endswith("step_00000020")


@pytest.mark.slow
def test_two_ranks_stop_together_at_the_same_step(data_dir, tmp_path):
    # Rank 0 alone holds the metrics: the decision reaches rank 1 by broadcast, or rank 1 would train on alone.
    save_dir = tmp_path / "run"
    values = helpers.overrides(data_dir, save_dir, 20, eval_every_n=5, eval_datasets="[validation]",
                               keep_last_k=1, checkpoint_every_n=100)
    values += ["training.early_stopping={metric: loss, patience: 1, min_delta: 100}"]
    done = helpers.recap("train", "--nproc-per-node", "2", "--config", str(helpers.DEMO), *helpers.set_args(values))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "early stopping at step 10" in done.stderr
    record = json.loads((save_dir / "checkpoints" / "best.json").read_text())
    assert (record["best_step"], record["stopped_at"]) == (5, 10)
    checkpoints = list_checkpoints(save_dir / "checkpoints")
    assert [c.step for c in checkpoints] == [5, 10]
    assert {p.name for p in checkpoints[0].path.glob("rank_*.json")} == {"rank_0.json", "rank_1.json"}
