"""One trial: its training runs as a subprocess; each new evaluation of the metric's dataset is reported to Optuna,
and the subprocess is stopped as soon as the pruner says so (or the search is interrupted)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.checkpoint import best_checkpoint
from core.log import get_logger
from core.train_loop import CHECKPOINT_DIR
from projects.home.recap.tune.objective import evaluated_values
from projects.home.recap.tune.space import MetricSpec

__all__ = ["TrialOutcome", "run_training_trial", "stop_process"]

logger = get_logger(__name__)

# How long a stopped training may take to finish its step and write its checkpoint before it is killed.
STOP_GRACE_SECONDS = 120.0


@dataclass
class TrialOutcome:
    """How a trial's training ended: complete (with its value), pruned, failed, or cut off by an interruption."""

    state: str  # "complete" | "pruned" | "failed" | "interrupted"
    value: float | None = None
    step: int | None = None
    error: str | None = None


def stop_process(process: subprocess.Popen, grace_s: float = STOP_GRACE_SECONDS) -> int:
    """SIGTERM (training stops after its current step, with a checkpoint), then SIGKILL after `grace_s` (its
    data-loading workers end with it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop within %.0fs of SIGTERM: killing it", process.pid, grace_s)
            process.kill()
            process.wait()
    return process.returncode


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_training_trial(
    trial: Any,
    command: list[str],
    save_dir: Path,
    log_path: Path,
    metric: MetricSpec,
    direction: str,
    stop: threading.Event,
    *,
    env: dict[str, str] | None = None,
    poll_s: float = 2.0,
    grace_s: float = STOP_GRACE_SECONDS,
) -> TrialOutcome:
    """Run `command` (a training writing its evaluations under `save_dir`), report each evaluation to the Optuna
    `trial` and stop the training when the trial should be pruned or `stop` is set."""
    if save_dir.exists():
        # A leftover of an earlier study in this directory: training would resume from its checkpoints.
        shutil.rmtree(save_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reported: list[tuple[int, float]] = []
    last_step = -1
    with open(log_path, "w") as log:
        # In recap tune's process group: a Ctrl-C in the terminal reaches the trainings too, and each stops at a
        # step boundary as it would alone.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                exited = process.poll() is not None  # read before the files: the last look sees every evaluation
                for step, value in evaluated_values(save_dir, metric, after=last_step):
                    last_step = step
                    if value is None:
                        continue
                    reported.append((step, value))
                    trial.report(value, step)
                    if trial.should_prune():
                        stop_process(process, grace_s)
                        return TrialOutcome("pruned", value, step)
                if exited:
                    break
                if stop.is_set():
                    stop_process(process, grace_s)
                    return TrialOutcome("interrupted", error="the search was interrupted")
                stop.wait(poll_s)
        finally:
            if process.poll() is None:  # an exception above: never leave a training running alone
                stop_process(process, grace_s)
    if process.returncode != 0 and stop.is_set():  # a training that got the same Ctrl-C and stopped first
        return TrialOutcome("interrupted", error="the search was interrupted")
    if process.returncode != 0:
        return TrialOutcome("failed", error=f"training exited with status {process.returncode} (log {log_path}):\n"
                                            f"{_log_tail(log_path)}")
    if not reported:
        return TrialOutcome("failed", error=f"training wrote no {metric.name} of {metric.dataset} under "
                                            f"{save_dir}/eval (log {log_path})")
    if metric.at == "best":
        pick = max if direction == "maximize" else min
        step, value = pick(reported, key=lambda sv: sv[1])
        return TrialOutcome("complete", value, step)
    step = reported[-1][0]
    delivered = best_checkpoint(save_dir / CHECKPOINT_DIR)  # marked by training.early_stopping, if configured
    if delivered is not None and delivered[0].step in dict(reported):
        step = delivered[0].step
    return TrialOutcome("complete", dict(reported)[step], step)
