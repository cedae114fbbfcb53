"""`recap evaluate --watch` (eval_watch.py): each checkpoint evaluated as training writes it (on 2 workers, rank 0
deciding for both), a stop at the timeout before the final step, and the final step it waits for."""

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from projects.home.recap.eval_watch import final_step  # noqa: E402
from projects.home.recap.main import main  # noqa: E402


@pytest.mark.slow
def test_watch_evaluates_each_checkpoint_as_training_writes_it(data_dir, tmp_path):
    """On 2 workers started by --nproc-per-node: rank 0 decides which checkpoint comes next for both."""
    config_file = helpers.write_config(tmp_path / "experiment.yaml", data_dir, tmp_path / "save")
    result = {}
    watcher = threading.Thread(target=lambda: result.update(done=helpers.recap(
        "evaluate", "--config", str(config_file), "--watch", "--poll-interval", "0.2", "--timeout", "200",
        "--nproc-per-node", "2")))
    watcher.start()  # before training starts: the checkpoints directory does not exist yet
    helpers.train_run(config_file, ["training.num_train_steps=3"])
    first = tmp_path / "save" / "eval" / "test" / "step_3" / "metrics.json"
    deadline = time.monotonic() + 180
    while not first.is_file() and watcher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.is_file(), result
    helpers.train_run(config_file)  # resumes from step 3 and writes the final checkpoint, step 6
    watcher.join(timeout=240)
    done = result["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluated steps: 3, 6" in done.stdout
    assert "final step" in done.stderr
    for step in (3, 6):
        assert (tmp_path / "save" / "eval" / "test" / f"step_{step}" / "report.html").is_file()


def test_watch_stops_at_its_timeout_before_the_final_step(trained_run, tmp_path, capsys):
    config_file, save_dir = trained_run
    argv = ["evaluate", "--config", str(config_file), "--watch", "--poll-interval", "0.05", "--timeout", "0.3",
            "--dataset", "single", "--set", "training.num_train_steps=100", "--set", f"training.save_dir={tmp_path}",
            "--checkpoint", str(save_dir)]
    assert main(argv) == 0
    assert "evaluated steps: 3, 6" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "eval" / "single").iterdir()) == ["step_3", "step_6"]
    step = save_dir / "checkpoints" / "step_00000006"
    assert main([*argv[:-1], str(step)]) == 1
    assert "--watch needs a checkpoints directory or a run's save_dir" in capsys.readouterr().err


def test_final_step_is_the_configured_steps_or_the_steps_of_the_epochs(trained_run):
    config_file, _ = trained_run
    assert final_step(helpers.load(config_file), world_size=2) == helpers.NUM_TRAIN_STEPS
    epochs = helpers.load(config_file, ["training.num_train_steps=null", "training.num_epochs=2",
                                        "training.gradient_accumulation_steps=3"])
    # 600 training rows: 600 // (2 ranks * 64) = 4 batches per rank and epoch; 8 batches make 3 updates.
    assert final_step(epochs, world_size=2) == 3
    assert final_step(epochs, world_size=1) == -(-2 * (600 // 64) // 3)
