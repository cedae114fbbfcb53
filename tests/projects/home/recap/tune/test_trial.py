"""One trial against a fake trainer that writes metrics.json files: reporting, pruning (the trainer is stopped with
SIGTERM), the value picked, failures; and the recovery of trials a killed search left running."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.run_lock import RunLock
from projects.home.recap.tune.space import MetricSpec, SearchSpace
from projects.home.recap.tune.study import (
    INTERRUPTED,
    counted_trials,
    journal_storage,
    make_pruner,
    open_study,
    recover_interrupted,
    trial_dir,
)
from projects.home.recap.tune.trial import run_training_trial

DEMO = Path(__file__).resolve().parents[5] / "projects/home/recap/config/demo.yaml"

# Once it handles SIGTERM (SAVE_DIR/ready), writes SAVE_DIR/eval/validation/step_<10 i>/metrics.json for each AUC
# given (two tasks, the second at AUC - 0.1). Then by mode: `done` exits 0; `early_stopping` first marks the best
# step's checkpoint in checkpoints/best.json; `hang` waits for SIGTERM and records it in SAVE_DIR/terminated; `fail`
# exits 3.
FAKE_TRAINER = r'''
import json, os, signal, sys, time
save_dir, mode, *aucs = sys.argv[1:]
def stop(signum, frame):
    open(os.path.join(save_dir, "terminated"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
os.makedirs(save_dir)
open(os.path.join(save_dir, "ready"), "w").close()
for i, auc in enumerate(aucs, 1):
    step_dir = os.path.join(save_dir, "eval", "validation", f"step_{10 * i}")
    os.makedirs(step_dir)
    doc = {"dataset": "validation", "step": 10 * i,
           "tasks": {"a": {"auc": float(auc), "logloss": 1 - float(auc)}, "b": {"auc": float(auc) - 0.1}}}
    with open(os.path.join(step_dir, ".tmp"), "w") as f:
        json.dump(doc, f)
    os.replace(os.path.join(step_dir, ".tmp"), os.path.join(step_dir, "metrics.json"))
if mode == "early_stopping":  # checkpoints of every step, the best AUC's marked as training.early_stopping does
    for i in range(1, len(aucs) + 1):
        os.makedirs(os.path.join(save_dir, "checkpoints", f"step_{10 * i:08d}"))
        open(os.path.join(save_dir, "checkpoints", f"step_{10 * i:08d}", "checkpoint.json"), "w").write("{}")
    best = max(range(len(aucs)), key=lambda i: float(aucs[i]))
    json.dump({"best_step": 10 * (best + 1)}, open(os.path.join(save_dir, "checkpoints", "best.json"), "w"))
if mode == "fail":
    print("fake trainer: out of memory", file=sys.stderr)
    sys.exit(3)
while mode == "hang":
    time.sleep(0.05)
'''


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)

    def run(trial, mode: str, aucs: list[float], metric: MetricSpec | None = None, stop=None, name: str = "run"):
        save_dir = tmp_path / name
        command = [sys.executable, str(script), str(save_dir), mode, *map(str, aucs)]
        outcome = run_training_trial(trial, command, save_dir, tmp_path / f"{name}.log", metric or MetricSpec(),
                                     "maximize", stop or threading.Event(), poll_s=0.02, grace_s=30)
        return outcome, save_dir

    return run


def test_evaluations_are_reported_and_the_final_one_is_the_value(fake):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    outcome, _ = fake(trial, "done", [0.7, 0.9, 0.8])
    assert (outcome.state, outcome.step) == ("complete", 30)
    assert outcome.value == pytest.approx((0.8 + 0.7) / 2)  # the mean over tasks a and b
    study.tell(trial, outcome.value)
    assert study.trials[0].intermediate_values == pytest.approx({10: 0.65, 20: 0.85, 30: 0.75})


def test_under_early_stopping_the_value_is_the_best_checkpoints(fake):
    # The run hands on its best checkpoint (step 20), not its last: the trial is worth that checkpoint.
    outcome, _ = fake(optuna.create_study().ask(), "early_stopping", [0.7, 0.9, 0.8])
    assert (outcome.state, outcome.step) == ("complete", 20)
    assert outcome.value == pytest.approx((0.9 + 0.8) / 2)


def test_best_value_and_a_task_metric(fake):
    trial = optuna.create_study().ask()
    outcome, _ = fake(trial, "done", [0.7, 0.9, 0.8], MetricSpec(name="auc", task="a", at="best"))
    assert (outcome.state, outcome.value, outcome.step) == ("complete", 0.9, 20)
    trial = optuna.create_study(direction="minimize").ask()
    outcome, _ = fake(trial, "done", [0.7, 0.9], MetricSpec(name="loss", task="a"), name="loss")
    assert outcome.value == pytest.approx(0.1)


def test_a_bad_trial_is_pruned_and_its_training_stopped(fake):
    # The default pruner: the median of earlier trials at the same step, after one finished trial here.
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    outcome, _ = fake(good, "done", [0.8, 0.9], name="good")
    study.tell(good, outcome.value)
    bad = study.ask()
    outcome, save_dir = fake(bad, "hang", [0.6], name="bad")
    assert (outcome.state, outcome.step) == ("pruned", 10)
    assert (save_dir / "terminated").exists()  # stopped with SIGTERM, so training could write its checkpoint
    study.tell(bad, state=TrialState.PRUNED)
    assert study.trials[1].state == TrialState.PRUNED


def test_failed_training_names_its_status_and_log(fake, tmp_path):
    outcome, _ = fake(optuna.create_study().ask(), "fail", [0.7])
    assert outcome.state == "failed"
    assert "exited with status 3" in outcome.error and "fake trainer: out of memory" in outcome.error
    assert str(tmp_path / "run.log") in outcome.error
    outcome, _ = fake(optuna.create_study().ask(), "done", [], name="silent")
    assert outcome.state == "failed" and "wrote no auc of validation" in outcome.error


def test_interruption_stops_the_training(fake, tmp_path):
    stop = threading.Event()
    save_dir = tmp_path / "run"

    def interrupt_when_ready() -> None:
        while not (save_dir / "ready").exists():
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    outcome, _ = fake(optuna.create_study().ask(), "hang", [], stop=stop)
    assert outcome.state == "interrupted"
    assert (save_dir / "terminated").exists()


def test_trials_left_running_by_a_killed_search_are_failed_and_queued_again(tmp_path):
    space = SearchSpace(base=str(DEMO), parameters={"data.batch_size": {"type": "categorical", "choices": [16, 32]}})
    storage = journal_storage(tmp_path)
    study = open_study(storage, tmp_path, space, DEMO, make_pruner("median"), seed=0)
    done = study.ask()
    done.suggest_categorical("data.batch_size", [16, 32])
    study.tell(done, 0.7)
    running = study.ask()
    batch_size = running.suggest_categorical("data.batch_size", [16, 32])
    trial_dir(tmp_path, running.number).mkdir(parents=True)
    # The killed search's training is still alive: it holds its save_dir's lock.
    lock = RunLock(trial_dir(tmp_path, running.number))
    lock.acquire()
    with pytest.raises(SystemExit, match=f"trial {running.number} of the interrupted search is still training"):
        recover_interrupted(study, journal_storage(tmp_path), tmp_path)
    lock.release()

    # A new search on the same directory: the same study, its finished trial kept.
    storage = journal_storage(tmp_path)
    study = open_study(storage, tmp_path, space, DEMO, make_pruner("median"), seed=0)
    assert recover_interrupted(study, storage, tmp_path) == [running.number]
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 0.7
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs[INTERRUPTED]
    assert trials[2].state == TrialState.WAITING and trials[2].user_attrs["retry_of"] == running.number
    assert not trial_dir(tmp_path, running.number).exists()
    assert counted_trials(study) == 1
    retry = study.ask()
    assert retry.number == 2 and retry.suggest_categorical("data.batch_size", [16, 32]) == batch_size


def test_a_study_of_another_space_is_refused(tmp_path):
    space = SearchSpace(base=str(DEMO), parameters={"data.batch_size": {"type": "categorical", "choices": [16, 32]}})
    open_study(journal_storage(tmp_path), tmp_path, space, DEMO, make_pruner("median"), seed=None)
    other = SearchSpace(base=str(DEMO), parameters={"data.batch_size": {"type": "categorical", "choices": [8, 32]}})
    with pytest.raises(Exception, match="holds a study of another search space .*parameters"):
        open_study(journal_storage(tmp_path), tmp_path, other, DEMO, make_pruner("median"), seed=None)
