"""Model selection on the periodic evaluation: the best checkpoint and early stopping.

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
from dataclasses import dataclass, field
from typing import Any

from core.train_config import EarlyStoppingConfig

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
