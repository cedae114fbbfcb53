"""Model selection on the periodic evaluation: the best checkpoint and early stopping (the decisions: EarlyStopping;
taking them inside the training loop, alike on every rank: ModelSelection).

After each periodic evaluation the selected value (core.train_config.EarlyStoppingConfig) is compared with the
best so far; an improvement by more than min_delta makes the current step the best one, and `patience` evaluations
in a row without one stop training. The whole history of (step, value) is kept, so a run resumed from an earlier
checkpoint drops the evaluations after it and recomputes the same decisions (the evaluations it repeats give the
same values: resume is exact).

Tags read (the evaluator's TensorBoard scalars): eval/<dataset>/<task>/<auc|rce|logloss>, eval/<dataset>/loss (the
loss-weighted sum over tasks) and eval/<dataset>/ranking/<score|task>/ndcg@<k>.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from core.checkpoint import read_best
from core.log import get_logger
from core.train_config import EarlyStoppingConfig

if TYPE_CHECKING:
    from core.checkpoint_manager import CheckpointManager
    from core.distributed import DistributedContext
    from core.tensorboard import MetricsWriter

logger = get_logger(__name__)

MEAN = "mean"


def describe(config: EarlyStoppingConfig) -> str:
    """The selected value in words, e.g. "mean auc on validation"."""
    metric = f"ndcg@{config.ndcg_k}" if config.metric == "ndcg" else config.metric
    return f"{config.task} {metric} on {config.dataset}"


def selected_value(config: EarlyStoppingConfig, tasks: list[str], scalars: dict[str, float]) -> float | None:
    """The value early stopping follows in one evaluation's scalars; None when the evaluation did not produce it."""
    base = f"eval/{config.dataset}"
    if config.metric == "ndcg":
        value = scalars.get(f"{base}/ranking/{config.task}/ndcg@{config.ndcg_k}")
    elif config.metric == "loss" and config.task == MEAN:
        value = scalars.get(f"{base}/loss")
    else:
        key = "logloss" if config.metric == "loss" else config.metric
        names = tasks if config.task == MEAN else [config.task]
        values = [scalars.get(f"{base}/{t}/{key}") for t in names]
        # A task without both classes in the set has no AUC: the mean is over the tasks that have one.
        defined = [v for v in values if v is not None and math.isfinite(v)]
        value = sum(defined) / len(defined) if defined else None
    return value if value is not None and math.isfinite(value) else None


@dataclass
class EarlyStopping:
    """The decisions of model selection, identical on every rank given the same values."""

    config: EarlyStoppingConfig
    history: list[tuple[int, float]] = field(default_factory=list)
    stopped_at: int | None = None

    @property
    def maximize(self) -> bool:
        return self.config.metric != "loss"

    def _better(self, value: float, best: float) -> bool:
        delta = value - best if self.maximize else best - value
        return delta > self.config.min_delta

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the best evaluation so far."""
        best: tuple[int, float] | None = None
        for step, value in self.history:
            if best is None or self._better(value, best[1]):
                best = (step, value)
        return best

    def evaluations_without_improvement(self) -> int:
        best = self.best()
        return 0 if best is None else sum(1 for step, _ in self.history if step > best[0])

    def update(self, step: int, value: float | None) -> tuple[bool, bool]:
        """Record one evaluation; returns (this step is the new best, training should stop now)."""
        if value is None:
            return False, False
        self.history = [(s, v) for s, v in self.history if s < step] + [(step, value)]
        best = self.best()
        improved = best is not None and best[0] == step
        patience = self.config.patience
        stop = patience is not None and self.evaluations_without_improvement() >= patience
        if stop:
            self.stopped_at = step
        return improved, stop

    def rewind(self, step: int) -> None:
        """Forget what happened after `step` (a run resumed from the checkpoint of that step)."""
        self.history = [(s, v) for s, v in self.history if s <= step]
        if self.stopped_at is not None and self.stopped_at > step:
            self.stopped_at = None

    def state_dict(self) -> dict[str, Any]:
        best = self.best()
        return {
            "selected": describe(self.config),
            "metric": self.config.metric,
            "task": self.config.task,
            "dataset": self.config.dataset,
            "maximize": self.maximize,
            "best_step": best[0] if best else None,
            "best_value": best[1] if best else None,
            "stopped_at": self.stopped_at,
            "history": [[s, v] for s, v in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("selected") != describe(self.config):
            # Another selection rule: its history says nothing about this one.
            self.history, self.stopped_at = [], None
            return
        self.history = [(int(s), float(v)) for s, v in state.get("history", [])]
        self.stopped_at = state.get("stopped_at")


class ModelSelection:
    """Early stopping inside the training loop (core/train_loop.py): after each periodic evaluation (collective) the
    selected value is agreed by every rank (rank 0 holds the metrics), the best step is kept as a checkpoint and
    marked in the checkpoints' best.json, and the decisions are logged and written to TensorBoard. `group` carries
    the agreement (a gloo group under NCCL, so it costs no device synchronization; None: the default group)."""

    def __init__(self, config: EarlyStoppingConfig, task_names: Sequence[str], checkpoints: CheckpointManager,
                 ctx: DistributedContext, group: dist.ProcessGroup | None = None) -> None:
        self.stopping = EarlyStopping(config)
        self.task_names = list(task_names)
        self.checkpoints = checkpoints
        self.ctx = ctx
        self.group = group

    def restore(self, step: int) -> None:
        """Early stopping's history as of the step training resumes from (none for a fresh run)."""
        record = read_best(self.checkpoints.directory)
        if record is not None:
            self.stopping.load_state_dict(record)
        self.stopping.rewind(step)

    def stopped_at(self, step: int) -> bool:
        """Whether the run stopped early at `step` already (then it is said: nothing is left to train)."""
        if self.stopping.stopped_at != step:
            return False
        logger.info("this run stopped early at step %d (%s); nothing to train: its best checkpoint is %s",
                    step, describe(self.stopping.config), self.stopping.best())
        return True

    def select(self, step: int, metrics: dict[str, float], writer: MetricsWriter,
               checkpoint_step: Callable[[], None]) -> bool:
        """After the evaluation of `step` (collective): mark and keep the best checkpoint (checkpoint_step writes the
        checkpoint of this step unless it exists); True to stop training."""
        stopping = self.stopping
        value = selected_value(stopping.config, self.task_names, metrics) if self.ctx.is_main else None
        if self.ctx.world_size > 1:  # rank 0 holds the metrics; every rank must take the same decisions
            holder = torch.tensor([math.nan if value is None else value], dtype=torch.float64)
            dist.broadcast(holder, src=0, group=self.group)
            value = None if math.isnan(holder.item()) else holder.item()
        if value is None:
            logger.warning("early stopping: this evaluation has no %s; nothing decided", describe(stopping.config))
            return False
        improved, stop = stopping.update(step, value)
        if improved or stop:
            checkpoint_step()  # the best (or the last) step must exist as a checkpoint
        self.checkpoints.mark_best(stopping.state_dict())
        best = stopping.best()
        assert best is not None  # update() has just recorded a value
        best_step, best_value = best
        writer.scalars({"early_stopping/value": value, "early_stopping/best_value": best_value,
                        "early_stopping/best_step": float(best_step)}, step)
        logger.info("early stopping: %s = %.6g at step %d; best %.6g at step %d (%d evaluation(s) without "
                    "improvement)", describe(stopping.config), value, step, best_value, best_step,
                    stopping.evaluations_without_improvement())
        if stop:
            writer.scalars({"early_stopping/stopped_at": float(step)}, step)
            logger.warning("early stopping at step %d: %s did not improve by more than %g in %d evaluations; the "
                           "best checkpoint is step %d (checkpoints/best)", step, describe(stopping.config),
                           stopping.config.min_delta, stopping.config.patience, best_step)
        return stop
