"""The study on disk and the search loop: N worker threads, each running one training subprocess at a time.

The study lives in TUNE_DIR/study.journal, Optuna's JournalStorage on a file: an append-only log of operations that
several threads or processes can write at once under a file lock, needs no database, and loses at most the line
being written when the process is killed. (SQLite through RDBStorage serialises writers on one database lock and
fails parallel writers with "database is locked" under load.) A second `recap tune` with the same TUNE_DIR loads
the same study and continues it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from core.config import ConfigError
from core.log import get_logger
from core.run_lock import RunLock, RunLockedError
from projects.home.recap.schema import load_recap_config
from projects.home.recap.tune.space import SearchSpace, overrides_for, yaml_value
from projects.home.recap.tune.trial import STOP_GRACE_SECONDS, run_training_trial

__all__ = [
    "JOURNAL_FILE",
    "STUDY_NAME",
    "Search",
    "counted_trials",
    "journal_storage",
    "make_pruner",
    "open_study",
    "recover_interrupted",
    "trial_dir",
]

logger = get_logger(__name__)

STUDY_NAME = "recap-tune"
JOURNAL_FILE = "study.journal"
TRIALS_DIR = "trials"
LOGS_DIR = "logs"
# The user attribute that marks a trial cut off by an interruption: it does not count towards --trials, and its
# parameters are queued again.
INTERRUPTED = "interrupted"


def make_pruner(name: str, eval_every_n: int = 1) -> optuna.pruners.BasePruner:
    """none | median | hyperband. Reports come at training steps, every eval_every_n: Hyperband's smallest
    budget is one evaluation."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        # Five finished trials before any pruning; never on a trial's first evaluation alone.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0, n_min_trials=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every_n, max_resource="auto")
    raise ValueError(f"unknown pruner {name!r} (none, median or hyperband)")


def trial_dir(tune_dir: Path, number: int) -> Path:
    """A trial's training.save_dir."""
    return tune_dir / TRIALS_DIR / str(number)


def _space_record(space: SearchSpace, base: Path) -> dict:
    return {"base": str(base.resolve()), **space.model_dump(mode="json", exclude={"base"})}


def journal_storage(tune_dir: Path) -> JournalStorage:
    """The storage of the study under `tune_dir`."""
    tune_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(tune_dir / JOURNAL_FILE)))


def open_study(storage: JournalStorage, tune_dir: Path, space: SearchSpace, base: Path,
               pruner: optuna.pruners.BasePruner, seed: int | None) -> optuna.Study:
    """Create the study in `storage`, or load it; a study of another search space is an error."""
    # A resumed search must not draw the same first random points again: the seed moves with the trials done.
    done = 0
    if STUDY_NAME in {s.study_name for s in storage.get_all_studies()}:
        done = len(storage.get_all_trials(storage.get_study_id_from_name(STUDY_NAME), deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + done, constant_liar=True)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                                pruner=pruner, direction=space.resolved_direction,
                                load_if_exists=True)
    record = _space_record(space, base)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", record)
    elif stored != record:
        changed = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
        raise ConfigError(f"{tune_dir}: holds a study of another search space (differs in: {', '.join(changed)}); "
                          "continue it with the same space and base, or choose another --output")
    return study


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards --trials: finished ones (complete, pruned or failed), not those cut off by an
    interruption (queued again instead)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get(INTERRUPTED))


def _requeue(study: optuna.Study, number: int, params: dict, tune_dir: Path) -> None:
    """Queue a cut-off trial's parameters again and remove its partial training."""
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": number})
    shutil.rmtree(trial_dir(tune_dir, number), ignore_errors=True)


def recover_interrupted(study: optuna.Study, storage: JournalStorage, tune_dir: Path) -> list[int]:
    """Trials left running by a search that was killed: failed, queued again, their save_dirs removed. A training
    of theirs still running (it holds its save_dir's lock) stops the search with an error naming it."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        save_dir = trial_dir(tune_dir, trial.number)
        if save_dir.is_dir():
            lock = RunLock(save_dir)
            try:
                lock.acquire()
            except RunLockedError as exc:
                raise SystemExit(f"trial {trial.number} of the interrupted search is still training: {exc}") from None
            lock.release()
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        _requeue(study, trial.number, trial.params, tune_dir)
        recovered.append(trial.number)
    if recovered:
        logger.info("trials %s were running when the last search stopped: failed, and queued again",
                    ", ".join(map(str, recovered)))
    return recovered


@dataclass
class Search:
    """Run trials until --trials are counted, --timeout passes, or `stop` is set (by a signal)."""

    study: optuna.Study
    space: SearchSpace
    base: Path
    tune_dir: Path
    n_trials: int
    parallel: int = 1
    timeout_s: float | None = None
    # The training command before `--config BASE --set ...`; tests put a fake trainer here.
    trainer: list[str] = field(default_factory=lambda: [sys.executable, "-m", "projects.home.recap.main", "train"])
    poll_s: float = 2.0
    grace_s: float = STOP_GRACE_SECONDS
    on_trial_end: Any = None  # called with the study after each trial, under the lock (writes the reports)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._error: BaseException | None = None
        self._deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        self._env = dict(os.environ)
        # N trainings at once share the cores: without a limit each would start a thread per core.
        self._env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))

    def _next_trial(self) -> optuna.Trial | None:
        with self._lock:
            if self.stop.is_set() or (self._deadline is not None and time.monotonic() >= self._deadline):
                return None
            if counted_trials(self.study) + self._running >= self.n_trials:
                return None
            trial = self.study.ask()
            for key, parameter in self.space.parameters.items():
                parameter.suggest(trial, key)
            self._running += 1
            return trial

    def overrides(self, trial: optuna.Trial | optuna.trial.FrozenTrial, save_dir: Path) -> list[str]:
        """A trial's --set values: the space's fixed values, the sampled ones, and its own save_dir."""
        sampled = {key: self.space.parameters[key].config_value(trial.params[key]) for key in self.space.parameters}
        return [*overrides_for(self.space.fixed), *overrides_for(sampled),
                f"training.save_dir={yaml_value(str(save_dir))}"]

    def _run(self, trial: optuna.Trial) -> None:
        save_dir = trial_dir(self.tune_dir, trial.number)
        overrides = self.overrides(trial, save_dir)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("save_dir", str(save_dir))
        try:
            # A sampled value the config refuses fails this trial alone, without starting a training.
            load_recap_config(self.base, overrides)
        except ConfigError as exc:
            logger.warning("trial %d: invalid config:\n%s", trial.number, exc)
            trial.set_user_attr("error", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            return
        sampled = overrides[len(self.space.fixed):-1]
        logger.info("trial %d: training in %s with %s", trial.number, save_dir, " ".join(sampled))
        command = [*self.trainer, "--config", str(self.base), *[a for o in overrides for a in ("--set", o)]]
        log_path = self.tune_dir / LOGS_DIR / f"trial_{trial.number}.log"
        trial.set_user_attr("log", str(log_path))
        outcome = run_training_trial(trial, command, save_dir, log_path, self.space.metric,
                                     self.space.resolved_direction, self.stop, env=self._env, poll_s=self.poll_s,
                                     grace_s=self.grace_s)
        if outcome.step is not None:
            trial.set_user_attr("step", outcome.step)
        if outcome.error:
            trial.set_user_attr("error", outcome.error)
        if outcome.state == "complete":
            self.study.tell(trial, outcome.value)
        elif outcome.state == "pruned":
            logger.info("trial %d: pruned at step %d (%s %.5f)", trial.number, outcome.step, self.space.metric.name,
                        outcome.value)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if outcome.state == "failed":
                logger.warning("trial %d failed: %s", trial.number, outcome.error)
            if outcome.state == "interrupted":
                trial.set_user_attr(INTERRUPTED, True)
            self.study.tell(trial, state=TrialState.FAIL)
            if outcome.state == "interrupted":
                _requeue(self.study, trial.number, trial.params, self.tune_dir)

    def _worker(self) -> None:
        while (trial := self._next_trial()) is not None:
            try:
                self._run(trial)
            except BaseException as exc:
                # A fault of the search itself, not of a training: stop the others and raise it in the main thread;
                # the trial stays running in the study, so the next search queues it again.
                self._error = exc
                self.stop.set()
                return
            finally:
                with self._lock:
                    self._running -= 1
                    if self.on_trial_end is not None:
                        self.on_trial_end(self.study)

    def run(self) -> int | None:
        """Run the search in this (main) thread's care; the number of the signal that stopped it, or None."""
        # The training's own handling (imported late: it loads torch): record the signal, stop cleanly.
        from core.stop_signals import stop_signals

        workers = [threading.Thread(target=self._worker, name=f"recap-tune-{i}", daemon=True)
                   for i in range(self.parallel)]
        with stop_signals() as requested:
            for worker in workers:
                worker.start()
            try:
                for worker in workers:
                    while worker.is_alive():
                        worker.join(timeout=0.5)
                        if "signal" in requested and not self.stop.is_set():
                            logger.warning("stopping the running trials; the study is kept in %s", self.tune_dir)
                            self.stop.set()
            except KeyboardInterrupt:
                # A second Ctrl-C: the trainings got it too and stop at once; the next search recovers their trials.
                self.stop.set()
                logger.warning("interrupted at once: the trials still running are recovered by the next search")
        if self._error is not None:
            raise self._error
        return requested.get("signal")
