"""Training when something around it goes wrong: a report that cannot be written, an evaluation that fails, a schedule
too long for the run, --start-over over healthy checkpoints, fewer steps than the checkpoint has, and the launcher's
exit status after a stop."""

import logging
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.distributed import stop_status  # noqa: E402
from projects.home.recap.commands.train import checked_stop  # noqa: E402
from projects.home.recap.schema import load_recap_config  # noqa: E402

data_dir, ctx = helpers.data_dir, helpers.ctx  # the module's fixtures


def _evaluated_config(data_dir: Path, save_dir: Path, steps: int):
    # Evaluation at the last step, one batch per validation set; no periodic checkpoint before the end.
    return helpers.config(data_dir, save_dir, steps, eval_every_n=steps, num_eval_steps=1)


def test_a_report_that_cannot_be_written_costs_neither_the_run_nor_its_checkpoint(data_dir, ctx, tmp_path, monkeypatch,
                                                                                  caplog):
    import projects.home.recap.eval_report as eval_report
    from projects.home.recap.train import train

    def broken_writer(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")  # what the chart's tick step once raised

    monkeypatch.setattr(eval_report, "write_report", broken_writer)
    with caplog.at_level(logging.ERROR):
        result = train(_evaluated_config(data_dir, tmp_path, 4), ctx)
    assert result.step == 4
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4]
    assert "eval/validation/loss" in result.last_eval_metrics  # the metrics themselves were computed
    assert "the report in" in caplog.text and "ZeroDivisionError: float division by zero" in caplog.text


def test_a_failing_tensorboard_at_evaluation_does_not_stop_training(data_dir, ctx, tmp_path, monkeypatch):
    from core.tensorboard import MetricsWriter
    from projects.home.recap.train import train

    scalars = MetricsWriter.scalars

    def failing_for_evaluation(self, metrics, step):
        if any(tag.startswith("eval/") for tag in metrics):
            raise OSError(28, "No space left on device")
        return scalars(self, metrics, step)

    monkeypatch.setattr(MetricsWriter, "scalars", failing_for_evaluation)
    result = train(helpers.config(data_dir, tmp_path, 6, eval_every_n=3, num_eval_steps=1), ctx)
    assert result.step == 6
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [6]


def test_the_last_step_is_checkpointed_before_its_evaluation_runs(data_dir, ctx, tmp_path, monkeypatch):
    # A failing metric is a real error and stops the run, but the trained steps are already saved.
    from projects.home.recap.evaluate import Evaluator
    from projects.home.recap.train import train

    def failing_metrics(self, *args, **kwargs):
        raise RuntimeError("a metric failed")

    monkeypatch.setattr(Evaluator, "evaluate_dataset", failing_metrics)
    with pytest.raises(RuntimeError, match="a metric failed"):
        train(_evaluated_config(data_dir, tmp_path, 4), ctx)
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4]


def test_a_schedule_longer_than_the_run_is_a_config_error_before_the_model_is_built(data_dir, ctx, tmp_path,
                                                                                   monkeypatch):
    import projects.home.recap.train as recap_train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the schedule was checked")

    monkeypatch.setattr(recap_train, "build_training", no_model)
    cosine = "{linear_ramp_to_cosine: {learning_rate: 0.003, final_learning_rate: 0.0001, num_ramp_steps: 100}}"
    config = load_recap_config(helpers.DEMO, helpers.overrides(data_dir, tmp_path, 50)
                               + [f"optimizer.dense.learning_rate={cosine}"])
    with pytest.raises(ConfigError, match=r"^optimizer\.dense\.learning_rate\.linear_ramp_to_cosine: num_ramp_steps "
                                          r"\(100\) must be below the last step of the cosine \(50, "):
        recap_train.train(config, ctx)


def test_start_over_trains_from_step_0_even_over_healthy_checkpoints(data_dir, ctx, tmp_path):
    from projects.home.recap.train import train

    train(helpers.config(data_dir, tmp_path, 4), ctx)
    result = train(helpers.config(data_dir, tmp_path, 6), ctx, start_over=True)
    assert (result.step, result.resumed_from) == (6, None)
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [6]
    assert (tmp_path / "checkpoints" / "step_00000004.replaced" / "checkpoint.json").is_file()


def test_fewer_steps_than_the_checkpoint_is_an_error_that_keeps_the_run_s_config(data_dir, ctx, tmp_path):
    from projects.home.recap.train import train

    train(helpers.config(data_dir, tmp_path, 6), ctx)
    written = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"training\.num_train_steps is 4, but \S+step_00000006 is already at step "
                                          r"6: nothing to train"):
        train(helpers.config(data_dir, tmp_path, 4), ctx)
    assert (tmp_path / "config.yaml").read_text() == written
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [6]


def test_the_launcher_reports_a_stop_only_with_a_checkpoint_written_after_it_started(tmp_path):
    step = tmp_path / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "checkpoint.json").write_text("{}")
    written = (step / "checkpoint.json").stat().st_mtime
    assert checked_stop(143, tmp_path, launched_at=written) == 143
    # A checkpoint from before the launch: the workers ended without one (killed before they could write it).
    os.utime(step / "checkpoint.json", (written - 60, written - 60))
    assert checked_stop(143, tmp_path, launched_at=written) == 1
    assert checked_stop(143, tmp_path / "empty", launched_at=time.time()) == 1
    assert checked_stop(0, tmp_path / "empty", launched_at=time.time()) == 0


def test_ranks_that_stopped_on_a_signal_are_a_stop_not_a_failure():
    # One rank signalled: it exits 143 after the checkpoint, and the launcher may end the other with SIGTERM (-15).
    assert stop_status([143, -15]) == 143 and stop_status([143, 143]) == 143 and stop_status([130]) == 130
    assert stop_status([143, 1]) is None and stop_status([-15, -15]) is None and stop_status([-9]) is None
