"""Model selection on the toy loop: the best checkpoint is marked and kept, training stops after `patience`
evaluations without improvement, a rerun is a no-op, a resume from before the stop decides the same; and the rule
itself (which value, which direction, min_delta) on hand-made evaluations."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy_training as toy  # noqa: E402

from core.checkpoint import list_checkpoints, resolve_checkpoint  # noqa: E402
from core.config import load_config  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from core.early_stopping import EarlyStopping, selected_value  # noqa: E402
from core.train_config import EarlyStoppingConfig  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def _rule(**values) -> EarlyStoppingConfig:
    return load_config(None, EarlyStoppingConfig, data={"dataset": "validation", **values})


class Scripted:
    """An evaluation whose mean AUC over the toy tasks follows `aucs` (one per evaluation), recording the steps."""

    def __init__(self, aucs: list[float]) -> None:
        self.aucs, self.steps = list(aucs), []

    def __call__(self, step, template=None):
        self.steps.append(step)
        auc = self.aucs[min(len(self.steps), len(self.aucs)) - 1]
        return {f"eval/validation/{task}/auc": auc for task in toy.TASKS}


def _config(save_dir, **overrides):
    values = {"num_train_steps": 20, "checkpoint_every_n": 100, "eval_every_n": 2, "keep_last_k": 1,
              "early_stopping": {"dataset": "validation", "patience": 2}}
    values.update(overrides)
    return toy.training_config(save_dir, **values)


def test_stops_after_patience_and_keeps_the_best_checkpoint(ctx, tmp_path):
    # Evaluations at steps 2, 4, 6, 8: best at step 4, two without improvement, stop at step 8.
    evaluate = Scripted([0.60, 0.70, 0.69, 0.65, 0.99])
    result = toy.build_loop(ctx, _config(tmp_path), evaluate=evaluate).run()
    assert evaluate.steps == [2, 4, 6, 8] and result.step == 8
    record = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert (record["best_step"], record["best_value"], record["stopped_at"]) == (4, 0.70, 8)
    assert record["history"] == [[2, 0.6], [4, 0.7], [6, 0.69], [8, 0.65]]
    # keep_last_k 1 keeps the last checkpoint, and the best one beside it.
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4, 8]
    # A run's directory resolves to its best checkpoint; checkpoints/latest to the newest.
    assert resolve_checkpoint(tmp_path).step == 4
    assert resolve_checkpoint(tmp_path / "checkpoints" / "best").step == 4
    assert resolve_checkpoint(tmp_path / "checkpoints" / "latest").step == 8
    # Running again is a no-op: no step, no evaluation.
    again = Scripted([0.99])
    rerun = toy.build_loop(ctx, _config(tmp_path), evaluate=again).run()
    assert rerun.step == 8 and again.steps == []


def test_a_resume_before_the_stop_decides_the_same(ctx, tmp_path):
    aucs = [0.60, 0.70, 0.69, 0.65, 0.99]
    straight = toy.build_loop(ctx, _config(tmp_path / "a", checkpoint_every_n=6), evaluate=Scripted(aucs)).run()
    # Stopped by its step budget at 6 (evaluations at 2, 4, 6), then resumed with the full budget.
    short = _config(tmp_path / "b", checkpoint_every_n=6, num_train_steps=6)
    toy.build_loop(ctx, short, evaluate=Scripted(aucs[:3])).run()
    resumed = Scripted(aucs[3:])
    result = toy.build_loop(ctx, _config(tmp_path / "b", checkpoint_every_n=6), evaluate=resumed).run()
    assert resumed.steps == [8] and result.step == straight.step == 8
    a = json.loads((tmp_path / "a" / "checkpoints" / "best.json").read_text())
    b = json.loads((tmp_path / "b" / "checkpoints" / "best.json").read_text())
    assert a == b


def test_patience_null_only_marks_the_best(ctx, tmp_path):
    config = _config(tmp_path, num_train_steps=8, early_stopping={"dataset": "validation", "patience": None})
    result = toy.build_loop(ctx, config, evaluate=Scripted([0.5, 0.9, 0.6, 0.55])).run()
    assert result.step == 8
    record = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert (record["best_step"], record["stopped_at"]) == (4, None)


def test_selected_value_per_metric_and_task():
    scalars = {"eval/v/a/auc": 0.8, "eval/v/b/auc": 0.6, "eval/v/a/logloss": 0.3, "eval/v/loss": 0.9,
               "eval/v/ranking/score/ndcg@10": 0.7, "eval/w/a/auc": 0.1}
    assert selected_value(_rule(dataset="v"), ["a", "b"], scalars) == pytest.approx(0.7)
    assert selected_value(_rule(dataset="v", task="b"), ["a", "b"], scalars) == 0.6
    assert selected_value(_rule(dataset="v", metric="loss"), ["a", "b"], scalars) == 0.9
    assert selected_value(_rule(dataset="v", metric="loss", task="a"), ["a", "b"], scalars) == 0.3
    assert selected_value(_rule(dataset="v", metric="ndcg", task="score"), ["a", "b"], scalars) == 0.7
    assert selected_value(_rule(dataset="v", metric="rce"), ["a", "b"], scalars) is None


def test_loss_is_minimized_and_min_delta_counts():
    stopping = EarlyStopping(_rule(metric="loss", patience=2, min_delta=0.01))
    assert stopping.update(1, 0.50) == (True, False)
    assert stopping.update(2, 0.495) == (False, False)  # better, but by less than min_delta
    assert stopping.update(3, 0.40) == (True, False)
    assert stopping.update(4, 0.41) == (False, False)
    assert stopping.update(5, 0.39999) == (False, True)
    assert stopping.best() == (3, 0.40)


def test_the_report_says_where_training_stopped(ctx, tmp_path):
    from core.report.html import render_run_html
    from core.report.markdown import render_run_markdown
    from core.report.run_files import RunResults
    from core.report.tensorboard import read_training_scalars

    toy.build_loop(ctx, _config(tmp_path), evaluate=Scripted([0.60, 0.70, 0.69, 0.65])).run()
    scalars = read_training_scalars(tmp_path / "tensorboard")
    assert scalars["early_stopping/stopped_at"] == [(8, 8.0)]
    run = RunResults("toy", tmp_path, [], scalars)
    sentence = "Model selection: the best checkpoint is step 4 (selected value 0.7). Training stopped early at step 8."
    assert sentence in render_run_markdown(run)
    assert sentence in render_run_html(run)
