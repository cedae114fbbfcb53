"""A trial's value from its run's periodic evaluation: SAVE_DIR/eval/<dataset>/step_<N>/metrics.json."""

from __future__ import annotations

import os

from core.report import METRICS_FILE, list_steps, read_json
from projects.home.recap.tune.space import MetricSpec

__all__ = ["METRIC_KEYS", "evaluated_values", "metric_value"]

# metrics.json's key of each metric name a search space may use.
METRIC_KEYS = {"auc": "auc", "rce": "rce", "loss": "logloss"}


def metric_value(document: dict, metric: MetricSpec) -> float | None:
    """The metric of one metrics.json document: a task's, or the plain mean over the tasks where it is defined
    (a task without positives in the set has no AUC at any step, so leaving it out treats every trial alike);
    None when undefined."""
    key = METRIC_KEYS[metric.name]
    tasks = document.get("tasks", {})
    blocks = list(tasks.values()) if metric.task == "mean" else [tasks.get(metric.task, {})]
    values = [block[key] for block in blocks if block.get(key) is not None]
    return float(sum(values) / len(values)) if values else None


def evaluated_values(save_dir: str | os.PathLike, metric: MetricSpec, after: int = -1) -> list[tuple[int, float | None]]:
    """(step, value) of every evaluation of the metric's dataset written after step `after`, in step order."""
    steps = list_steps(save_dir).get(metric.dataset, {})
    return [(step, metric_value(read_json(steps[step] / METRICS_FILE), metric))
            for step in sorted(steps) if step > after]
