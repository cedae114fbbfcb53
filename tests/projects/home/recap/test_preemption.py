"""Preemption: SIGTERM to `recap train --nproc-per-node 2` (the launcher, as a cluster sends it) makes every rank
finish its step, checkpoint it, and exit with status 143; a rerun resumes and ends where an uninterrupted run ends."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[3] / "core"))
from processes import alive, children  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402

STEPS = 150  # the stop, at step 10 or a few after, must come well before the end (a parent watch polls each second)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return helpers.make_data(tmp_path_factory.mktemp("data"))


def _train_command(data: Path, save_dir: Path) -> list[str]:
    values = helpers.overrides(data, save_dir, STEPS, checkpoint_every_n=10_000, train_log_every_n=5)
    return [sys.executable, "-m", "projects.home.recap.main", "train", "--config", str(helpers.DEMO),
            "--nproc-per-node", "2", *helpers.set_args(values)]


def _launch_past_step_10(data: Path, save_dir: Path, log: Path) -> subprocess.Popen:
    """Start the 2-worker training logging into `log`; return once it logged a step of two digits."""
    with open(log, "w") as err:  # the launcher keeps its own copy of the descriptor
        launcher = subprocess.Popen(_train_command(data, save_dir), cwd=helpers.REPO, env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 180
    while not re.search(rf"step \d\d+/{STEPS}", log.read_text()):
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 10"
        time.sleep(0.2)
    return launcher


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_and_a_rerun_matches_an_uninterrupted_run(data, tmp_path):
    log = tmp_path / "stopped.log"
    launcher = _launch_past_step_10(data, tmp_path / "run", log)
    launcher.send_signal(signal.SIGTERM)
    status = launcher.wait(timeout=120)
    text = log.read_text()
    assert status == 143, text[-3000:]
    stops = re.findall(r"stopped by SIGTERM at step (\d+); checkpoint (\S+)", text)
    assert len(stops) == 2 and len({s for s, _ in stops}) == 1, text[-3000:]  # both ranks, at the same step
    step = int(stops[0][0])
    assert 10 <= step < STEPS
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [step]

    rerun = subprocess.run(_train_command(data, tmp_path / "run"), cwd=helpers.REPO, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / f'step_{step:08d}'}" in rerun.stderr
    straight = subprocess.run(_train_command(data, tmp_path / "straight"), cwd=helpers.REPO, env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    ctx = init_distributed("cpu")
    try:
        config = helpers.config(data, tmp_path / "unused", 1)
        a = helpers.checkpoint_state(config, ctx, tmp_path / "straight")
        b = helpers.checkpoint_state(config, ctx, tmp_path / "run")
    finally:
        shutdown_distributed()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")


@pytest.mark.slow
def test_workers_of_a_killed_launcher_stop_with_a_checkpoint_instead_of_training_on(data, tmp_path):
    log = tmp_path / "killed.log"
    launcher = _launch_past_step_10(data, tmp_path / "run", log)
    workers = children(launcher.pid)
    assert len(workers) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 90
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(w) for w in workers), log.read_text()[-3000:]
    text = log.read_text()
    assert "the launcher (parent process) is gone: stopping this worker" in text
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", text).group(1))
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [step]
