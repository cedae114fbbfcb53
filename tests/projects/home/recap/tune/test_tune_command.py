"""`recap tune` end to end on tiny generated data: real trainings, SIGTERM mid-trial, the resumed study, and the
best config trained by `recap train` unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import train_helpers as helpers
import yaml

from projects.home.recap.schema import load_recap_config

LR = "optimizer.dense.learning_rate.linear_ramp_to_constant.learning_rate"


def write_space(tmp_path: Path, data_dir: Path) -> Path:
    """The demo model on 20 steps of the tiny data, evaluated every 10; three dimensions."""
    fixed = {}
    for override in helpers.overrides(data_dir, tmp_path / "unused", 20, eval_every_n=10,
                                      eval_datasets="[validation]"):
        key, value = override.split("=", 1)
        if key not in ("training.save_dir", "data.batch_size"):
            fixed[key] = yaml.safe_load(value)
    space = {
        "base": str(helpers.DEMO),
        "metric": {"name": "auc", "task": "mean", "dataset": "validation"},
        "fixed": fixed,
        "parameters": {
            LR: {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "data.batch_size": {"type": "categorical", "choices": [16, 32]},
            "model.tasks.is_favorited.mlp_config.layer_sizes": {"type": "categorical", "choices": [[8], [16, 8]]},
        },
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tune_command(space: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "projects.home.recap.main", "tune", "--space", str(space), "--output", str(output),
            "--trials", "2", "--seed", "3", "--pruner", "none"]


def trials(output: Path) -> list[dict]:
    path = output / "trials.json"
    return json.loads(path.read_text())["trials"] if path.is_file() else []


@pytest.mark.slow
def test_search_is_interrupted_resumed_and_its_best_config_trains(tmp_path):
    data_dir = helpers.make_data(tmp_path / "data")
    space = write_space(tmp_path, data_dir)
    output = tmp_path / "tune"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(tune_command(space, output), cwd=helpers.REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    # SIGTERM once trial 0 has completed and trial 1's training has started (the search cannot end before: trial
    # 1 trains for 20 steps).
    while not (any(t["state"] == "complete" for t in trials(output)) and (output / "logs/trial_1.log").exists()):
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=180) == 143, (tmp_path / "first.log").read_text()
    log.close()
    before = {t["number"]: t for t in trials(output)}
    assert before[0]["state"] == "complete" and before[1]["state"] == "interrupted"
    assert not (output / "trials/1").exists()  # its partial training is removed

    # The same command continues the same study: trial 0 is kept, trial 1's parameters run again as trial 2, and
    # with 2 trials counted the search ends.
    second = subprocess.run(tune_command(space, output), cwd=helpers.REPO, env=env, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    after = {t["number"]: t for t in trials(output)}
    assert sorted(after) == [0, 1, 2]
    assert after[0]["value"] == before[0]["value"] and after[0]["state"] == "complete"
    assert after[2]["state"] == "complete" and after[2]["retry_of"] == 1
    assert after[2]["params"] == before[1]["params"]
    assert set(after[2]["evaluations"]) == {"10", "20"} and after[2]["step"] == 20
    table = second.stdout.splitlines()
    assert table[0].split() == ["trial", "state", "value", "step", "parameters"]
    assert [line.split()[1] for line in table[1:4]] == ["complete", "interrupted", "complete"]
    assert "trial" in (output / "trials.html").read_text()

    # best.yaml: the best trial's values in the resolved config, training into TUNE_DIR/best.
    best_number = 0 if after[0]["value"] >= after[2]["value"] else 2
    config = load_recap_config(output / "best.yaml")
    values = config.model_dump(mode="json")
    assert values["optimizer"]["dense"]["learning_rate"]["linear_ramp_to_constant"]["learning_rate"] == \
        after[best_number]["params"][LR]
    assert config.data.batch_size == after[best_number]["params"]["data.batch_size"]
    assert config.training.save_dir == str(output / "best")
    trained = helpers.recap("train", "--config", str(output / "best.yaml"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (output / "best/eval/validation/step_20/metrics.json").is_file()

    # A changed search space does not mix with this study.
    changed = yaml.safe_load(space.read_text())
    changed["parameters"]["data.batch_size"]["choices"] = [8, 16]
    space.write_text(yaml.safe_dump(changed))
    third = subprocess.run(tune_command(space, output), cwd=helpers.REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 1 and "holds a study of another search space" in third.stderr
