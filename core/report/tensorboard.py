"""TensorBoard in and out: read a run's scalar curves from its event files, write evaluation metrics as scalars."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from core.log import get_logger
from core.metrics import METRIC_KEYS

__all__ = ["ScalarWriter", "metrics_to_scalars", "read_training_scalars", "write_metrics_to_tensorboard"]

logger = get_logger(__name__)

_EVENT_PREFIX = "events.out.tfevents."


class ScalarWriter(Protocol):
    """What is needed of a torch.utils.tensorboard.SummaryWriter."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


def _event_dirs(root: Path, exclude: Iterable[Path]) -> list[Path]:
    excluded = [p.resolve() for p in exclude]
    found = []
    for directory, subdirs, files in os.walk(root):
        here = Path(directory).resolve()
        if any(here == e or e in here.parents for e in excluded):
            subdirs[:] = []
            continue
        if any(f.startswith(_EVENT_PREFIX) for f in files):
            found.append(Path(directory))
    return sorted(found)


def read_training_scalars(run_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> dict:
    """Every scalar tag in the TensorBoard event files under run_dir: {tag: [(step, value), ...]} sorted by step.

    Event files in several directories get the directory (relative to run_dir) as a tag prefix. When a step was
    logged twice (a resumed run), the value written last wins.
    """
    from tensorboard.backend.event_processing import event_accumulator

    root = Path(run_dir)
    if not root.is_dir():
        return {}
    directories = _event_dirs(root, [Path(e) for e in exclude])
    scalars: dict[str, list[tuple[int, float]]] = {}
    for directory in directories:
        prefix = "" if len(directories) == 1 or directory == root else f"{directory.relative_to(root).as_posix()}/"
        try:
            acc = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0})
            acc.Reload()
        except Exception as exc:  # a corrupt or half-written event file must not stop a report
            logger.warning("could not read TensorBoard events in %s: %s", directory, exc)
            continue
        for tag in acc.Tags().get(event_accumulator.SCALARS, []):
            by_step: dict[int, float] = {}
            for event in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
                by_step[int(event.step)] = float(event.value)
            scalars[prefix + tag] = sorted(by_step.items())
    return scalars


def metrics_to_scalars(metrics: dict, prefix: str = "eval", include_strata: bool = False) -> dict[str, float]:
    """A metrics.json document as {TensorBoard tag: value}; undefined (null) metrics are left out.

    Tags: <prefix>/<dataset>/<task>/<metric>, <prefix>/<dataset>/<task>/oracle/<metric> and, with include_strata,
    <prefix>/<dataset>/<task>/<stratifier>=<value>/<metric>. With per-request ranking metrics
    <prefix>/<dataset>/ranking/<score or task>/<ndcg@k or request_auc>; with expert gates
    <prefix>/<dataset>/gates/<gate>/<entropy_of_mean, mean_entropy or weight_<expert>>.
    """
    dataset = metrics.get("dataset") or "dataset"
    scalars: dict[str, float] = {}

    def add(base: str, block: dict) -> None:
        for key in (*METRIC_KEYS, "group_auc"):
            if block.get(key) is not None:
                scalars[f"{base}/{key}"] = float(block[key])

    for task, block in metrics.get("tasks", {}).items():
        base = f"{prefix}/{dataset}/{task}"
        add(base, block)
        if block.get("oracle"):
            add(f"{base}/oracle", block["oracle"])
        if include_strata:
            for stratifier, values in (block.get("strata") or {}).items():
                for value, sub in values.items():
                    add(f"{base}/{stratifier}={value}", sub)
    ranking = metrics.get("ranking") or {}
    entries = ([("score", ranking["score"])] if ranking.get("score") else []) + list(ranking.get("tasks", {}).items())
    for name, block in entries:
        for key, value in block.items():
            if (key.startswith("ndcg@") or key == "request_auc") and value is not None:
                scalars[f"{prefix}/{dataset}/ranking/{name}/{key}"] = float(value)
    for gate, stats in (metrics.get("gates") or {}).items():
        base = f"{prefix}/{dataset}/gates/{gate}"
        for key in ("entropy_of_mean", "mean_entropy"):
            if stats.get(key) is not None:
                scalars[f"{base}/{key}"] = float(stats[key])
        for k, weight in enumerate(stats.get("mean_weights") or []):
            scalars[f"{base}/weight_{k}"] = float(weight)
    return scalars


def write_metrics_to_tensorboard(
    writer: ScalarWriter, metrics: dict, prefix: str = "eval", include_strata: bool = False
) -> int:
    """Write a metrics.json document's scalars (see metrics_to_scalars) at its step; returns how many."""
    scalars = metrics_to_scalars(metrics, prefix, include_strata)
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, metrics.get("step"))
    return len(scalars)
