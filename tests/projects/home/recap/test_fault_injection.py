"""Fault injection on the real `recap train`: SIGTERM to the launcher, to the run's process group and to one training
process, alone and on 2 ranks, with 0, 1 and 2 DataLoader workers. After each stop: exit status 143, a complete
checkpoint at the step where it stopped, no process of the run left alive, and an exact resume.

Each case is one chain: the run is stopped at step 2, resumed and stopped at step 4 (and 6 on 2 ranks) by the next
kind of signal. pause_hook/sitecustomize.py holds the signalled rank after the step until the signal arrives, so every
stop lands on a known step, and each stop's checkpoint is compared with an uninterrupted run's at that step: what a
resume loads equals what the uninterrupted run had, and the runs in between resumed from those checkpoints exactly.

SIGKILL of one rank of 2 (held the same way, after a periodic checkpoint): the run fails (exit 1) instead of waiting
for the dead rank, no process is left, and the rerun resumes exactly from the last periodic checkpoint."""

import json
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

data_dir, ctx = helpers.data_dir, helpers.ctx  # the module's fixtures

PAUSE_HOOK = Path(__file__).parent / "pause_hook"
# Who gets SIGTERM at each stop. Alone, the training process is its own launcher.
CHAINS = {1: ("trainer", "group"), 2: ("launcher", "group", "trainer")}
WAIT_SECONDS = 240  # generous bounds on a busy 2-core machine; a run that never gets there is a failure


def _command(data: Path, save_dir: Path, ranks: int, workers: int, steps: int) -> list[str]:
    values = helpers.overrides(data, save_dir, steps, checkpoint_every_n=10_000, train_log_every_n=10_000)
    values.append(f"data.num_workers={workers}")
    launcher = ["--nproc-per-node", str(ranks)] if ranks > 1 else []
    return [sys.executable, "-m", "projects.home.recap.main", "train", "--config", str(helpers.DEMO), *launcher,
            *helpers.set_args(values)]


def _descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *_descendants(child)]
    return found


def _kill_all(run: subprocess.Popen, pids: list[int]) -> None:
    """After a failed check: nothing of the run may outlive the test."""
    for pid in [run.pid, *pids, *_descendants(run.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.wait()


def _stop_at(command: list[str], step: int, ranks: int, target: str, workers: int, log: Path,
             signum: int = signal.SIGTERM) -> int:
    """Run `command` until its paused rank reports `step`, send `signum` (SIGTERM) to `target`; check no process of the
    run is left and return the exit status."""
    marker = log.with_suffix(".paused")
    # The signalled rank pauses (on 2 ranks rank 1: not the rank that writes the checkpoint's metadata).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PAUSE_HOOK), "RECAP_TEST_PAUSE_STEP": str(step),
           "RECAP_TEST_PAUSE_RANK": str(ranks - 1), "RECAP_TEST_PAUSE_MARKER": str(marker)}
    with open(log, "w") as err:
        # A session of its own: the process group is the run's, as a scheduler's job is.
        run = subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists():
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"step {step} not reached: {log.read_text()[-3000:]}"
            time.sleep(0.1)
        paused_pid = int(marker.read_text().split()[1])
        pids = _descendants(run.pid)
        trainers = [run.pid] if ranks == 1 else children(run.pid)
        # Every training process has its loader workers: they are what the signal must not kill.
        assert len(trainers) == ranks and all(len(children(t)) == workers for t in trainers), (trainers, pids)
        if target == "launcher":
            os.kill(run.pid, signum)
        elif target == "group":
            os.killpg(run.pid, signum)
        else:
            os.kill(paused_pid, signum)
        status = run.wait(timeout=WAIT_SECONDS)  # a run that hangs (a rank waiting forever for a dead one) fails
    except BaseException:
        _kill_all(run, pids)
        raise
    left = [pid for pid in pids if alive(pid)]
    if left:
        _kill_all(run, pids)
    assert not left, f"processes of the run left alive after it exited: {left}"
    return status


def _state(ctx, data: Path, checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """What a resume loads from `checkpoint`: every tensor, and each rank's data position and random generators."""
    tensors = helpers.checkpoint_state(helpers.config(data, checkpoint.parent / "unused", 1), ctx, checkpoint)
    ranks = {p.name: json.loads(p.read_text()) for p in checkpoint.glob("rank_*.json")}
    return tensors, ranks


@pytest.fixture(scope="module")
def uninterrupted(data_dir, ctx, tmp_path_factory):
    """The save_dir of an uninterrupted run to step 6 with a checkpoint every 2 steps, for (ranks, workers), made on
    first use. Alone, the run trains in this process; on 2 ranks, under the launcher. Without workers the loader
    splits each epoch as one worker does (the batches, hence every state, are the same): one run serves both."""
    runs: dict[tuple[int, int], Path] = {}

    def get(ranks: int, workers: int) -> Path:
        workers = max(workers, 1)
        if (ranks, workers) not in runs:
            save_dir = tmp_path_factory.mktemp(f"uninterrupted_{ranks}_{workers}")
            values = helpers.overrides(data_dir, save_dir, 6, checkpoint_every_n=2, keep_last_k=10,
                                       train_log_every_n=10_000) + [f"data.num_workers={workers}"]
            if ranks == 1:
                from projects.home.recap.schema import load_recap_config
                from projects.home.recap.train import train

                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # as the launched runs (OMP_NUM_THREADS=1): the same sums in the same order
                try:
                    train(load_recap_config(helpers.DEMO, values), ctx)
                finally:
                    torch.set_num_threads(threads)
            else:
                done = helpers.recap("train", "--config", str(helpers.DEMO), "--nproc-per-node", str(ranks),
                                     *helpers.set_args(values), timeout=WAIT_SECONDS)
                assert done.returncode == 0, done.stderr[-3000:]
            runs[ranks, workers] = save_dir
        return runs[ranks, workers]

    return get


@pytest.mark.slow
# Two loader workers per rank are run on one rank only: on two ranks they add nothing the single worker and the
# single rank with two workers do not already cover, at the cost of the suite's longest run.
@pytest.mark.parametrize("ranks,workers", [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)])
def test_sigterm_anywhere_stops_at_the_step_with_a_checkpoint_of_the_uninterrupted_state(
        data_dir, ctx, uninterrupted, tmp_path, ranks, workers):
    run_dir = tmp_path / "run"
    command = _command(data_dir, run_dir, ranks, workers, 6)
    stopped_at = []
    for i, target in enumerate(CHAINS[ranks]):
        step = 2 * (i + 1)
        log = tmp_path / f"stop_{step}_{target}.log"
        status = _stop_at(command, step, ranks, target, workers, log)
        text = log.read_text()
        assert status == 143, f"SIGTERM to the {target} at step {step}: exit {status}\n{text[-3000:]}"
        assert text.count(f"stopped by SIGTERM at step {step}; checkpoint") == ranks, text[-3000:]
        assert "killed by signal" not in text, text[-3000:]
        if step > 2:  # each run after the first resumed from the previous stop's checkpoint
            assert f"resumed from {run_dir / 'checkpoints' / f'step_{step - 2:08d}'}" in text, text[-3000:]
        stopped_at.append(list_checkpoints(run_dir / "checkpoints")[-1].step)
    assert stopped_at == [2, 4, 6][: len(CHAINS[ranks])]

    # Exact resume: each stop's checkpoint holds what the uninterrupted run had at that step (weights, optimizer
    # states, every rank's data position and random generators), and every run after the first resumed from one.
    reference = uninterrupted(ranks, workers) / "checkpoints"
    for step in stopped_at:
        name = f"step_{step:08d}"
        expected_tensors, expected_ranks = _state(ctx, data_dir, reference / name)
        tensors, rank_states = _state(ctx, data_dir, run_dir / "checkpoints" / name)
        for state in expected_ranks.values():
            state["data"]["num_workers"] = workers  # the one difference of the shared run without workers
        assert rank_states == expected_ranks and len(rank_states) == ranks, step
        assert tensors.keys() == expected_tensors.keys()
        for key in expected_tensors:
            torch.testing.assert_close(tensors[key], expected_tensors[key], rtol=0, atol=1e-6,
                                       msg=f"step {step}: {key} differs")


@pytest.mark.slow
def test_sigkill_of_one_rank_fails_the_run_and_a_rerun_resumes_from_the_last_checkpoint(data_dir, ctx, uninterrupted,
                                                                                        tmp_path):
    # Rank 1 (with its loader worker) is killed at step 3, after the periodic checkpoint of step 2: nothing can be
    # saved, and the other rank and the launcher must fail rather than wait for it, leaving no process behind.
    run_dir, log = tmp_path / "run", tmp_path / "killed.log"
    values = helpers.overrides(data_dir, run_dir, 6, checkpoint_every_n=2, keep_last_k=10, train_log_every_n=10_000)
    command = [sys.executable, "-m", "projects.home.recap.main", "train", "--config", str(helpers.DEMO),
               "--nproc-per-node", "2", *helpers.set_args(values + ["data.num_workers=1"])]
    status = _stop_at(command, 3, 2, "trainer", 1, log, signal.SIGKILL)
    text = log.read_text()
    assert status == 1, f"exit {status} after a rank was killed\n{text[-3000:]}"
    # The surviving rank ended too, by its failed collective (exit 1) or the launcher's SIGTERM (-15): never 0.
    assert re.search(r"training workers failed \(rank 0: exit code -?[1-9]\d*; rank 1: exit code -9\)", text), \
        text[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert [c.step for c in list_checkpoints(checkpoints)] == [2]
    assert not list(checkpoints.glob(".step_*.partial")), "a checkpoint of the killed step was started"

    # The rerun resumes from step 2 and ends where the uninterrupted run ends, state for state.
    done = helpers.recap(*command[3:], timeout=WAIT_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {checkpoints / 'step_00000002'}" in done.stderr, done.stderr[-3000:]
    expected_tensors, expected_ranks = _state(ctx, data_dir, uninterrupted(2, 1) / "checkpoints" / "step_00000006")
    tensors, rank_states = _state(ctx, data_dir, checkpoints / "step_00000006")
    assert rank_states == expected_ranks and len(rank_states) == 2
    for key in expected_tensors:
        torch.testing.assert_close(tensors[key], expected_tensors[key], rtol=0, atol=1e-6, msg=f"{key} differs")
