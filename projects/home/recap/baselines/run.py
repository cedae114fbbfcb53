"""`recap benchmark baselines`: per data set, make the data if absent, train our model from its config (`recap
train`'s path, then `recap evaluate`'s on the test split) and the two plain references on the same splits, and collect
every task's test figures side by side into one document (projects/home/recap/baselines/table.py prints it)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.distributed import launched_by_torchrun
from core.log import get_logger
from core.metrics import METRIC_KEYS
from projects.home.recap.baselines.arrays import load_reference_data
from projects.home.recap.baselines.datasets import (
    DEFAULT_CENSUS_INPUT,
    DEFAULT_CONFIGS,
    DEFAULT_DATA_DIRS,
    ensure_census,
    ensure_small,
)
from projects.home.recap.baselines.ours import train_and_evaluate
from projects.home.recap.baselines.references import ReferenceSettings, train_references
from projects.home.recap.baselines.small_data import DEFAULT_ROWS
from projects.home.recap.schema import RecapConfig, load_recap_config

logger = get_logger(__name__)

DATASETS = ("small", "census")
FULL = ReferenceSettings(plain_epochs=5, peer_max_epochs=10, patience=2)
# --quick: one epoch of everything (the peer may take a second), for tests and a first look.
QUICK = ReferenceSettings(plain_epochs=1, peer_max_epochs=2, patience=1)
QUICK_SMALL_ROWS = 5_000


@dataclass(frozen=True)
class BaselineSettings:
    """What `recap benchmark baselines` runs."""

    save_dir: Path
    datasets: tuple[str, ...] = DATASETS
    configs: dict[str, Path] = field(default_factory=lambda: dict(DEFAULT_CONFIGS))
    data_dirs: dict[str, Path] = field(default_factory=lambda: dict(DEFAULT_DATA_DIRS))
    census_input: Path = DEFAULT_CENSUS_INPUT
    small_rows: int = DEFAULT_ROWS
    seed: int = 0
    quick: bool = False

    @property
    def references(self) -> ReferenceSettings:
        base = QUICK if self.quick else FULL
        return ReferenceSettings(base.plain_epochs, base.peer_max_epochs, base.patience, self.seed)


@contextmanager
def _data_dir_variable(data_dir: Path):
    """RECAP_DATA_DIR set to data_dir while the shipped configs' paths are resolved, then as it was."""
    before = os.environ.get("RECAP_DATA_DIR")
    os.environ["RECAP_DATA_DIR"] = str(data_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RECAP_DATA_DIR", None)
        else:
            os.environ["RECAP_DATA_DIR"] = before


def dataset_config(settings: BaselineSettings, name: str) -> RecapConfig:
    """Our model's experiment for data set `name`: its config with training.save_dir = SAVE_DIR/<name>/ours (and one
    epoch with --quick)."""
    overrides = [f"training.save_dir={settings.save_dir / name / 'ours'}"]
    if settings.quick:
        overrides.append("training.num_epochs=1")
    with _data_dir_variable(settings.data_dirs[name]):
        config = load_recap_config(settings.configs[name], overrides)
    missing = [f"data.validation.{split}" for split in ("validation", "test") if split not in config.data.validation]
    if missing:
        raise SystemExit(f"{settings.configs[name]}: the benchmark needs {' and '.join(missing)} (early stopping of "
                         f"the peer reads 'validation', every model is scored on 'test')")
    return config


def _figures(block: dict | None) -> dict | None:
    return None if block is None else {k: block.get(k) for k in (*METRIC_KEYS, "rows")}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def run_dataset(settings: BaselineSettings, name: str) -> dict:
    """Make the data if absent, train and score the three models on it; the data set's part of the document."""
    data_dir = settings.data_dirs[name]
    if name == "small":
        data = ensure_small(data_dir, QUICK_SMALL_ROWS if settings.quick else settings.small_rows, settings.seed)
    else:
        data = ensure_census(data_dir, settings.census_input)
    config = dataset_config(settings, name)
    checkpoints = Path(config.training.save_dir) / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise SystemExit(f"{checkpoints} already holds a run (training would resume it): choose a new --save-dir")
    logger.info("%s: training our model from %s", name, settings.configs[name])
    ours = train_and_evaluate(config)
    logger.info("%s: training the plain and peer references", name)
    references = train_references(load_reference_data(config), settings.references)
    plain, peer = references["plain"], references["peer"]
    tasks = {}
    for task, block in ours.tasks.items():
        row = {"pos_rate": block.get("pos_rate"), "rows": block.get("rows"), "ours": _figures(block),
               "plain": _figures(plain.tasks[task]), "peer": _figures(peer.tasks[task]),
               "oracle": _figures(block.get("oracle"))}
        row["ours_minus_peer_auc"] = _difference(row["ours"]["auc"], row["peer"]["auc"])
        row["ours_minus_plain_auc"] = _difference(row["ours"]["auc"], row["plain"]["auc"])
        tasks[task] = row
    return {
        "config": str(settings.configs[name]),
        "data_dir": str(data_dir),
        "data": data,
        "tasks": tasks,
        "ours": {"save_dir": ours.save_dir, "checkpoint": ours.checkpoint, "steps": ours.steps,
                 "epochs": config.training.num_epochs, "seconds": round(ours.seconds, 1)},
        "plain": {"epochs": plain.epochs_trained, "seconds": round(plain.seconds, 1)},
        "peer": {"epochs": peer.epochs_trained, "best_epoch": peer.chosen_epoch,
                 "validation_mean_auc": peer.validation_auc, "patience": settings.references.patience,
                 "seconds": round(peer.seconds, 1)},
    }


def run_baselines(settings: BaselineSettings) -> dict:
    """The whole benchmark's document (without the command line, which the command adds)."""
    if launched_by_torchrun():
        raise SystemExit("recap benchmark baselines runs in one process: start it without torchrun")
    unknown = [name for name in settings.datasets if name not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}: choose from {list(DATASETS)}")
    start = time.perf_counter()
    datasets = {name: run_dataset(settings, name) for name in settings.datasets}
    return {"quick": settings.quick, "seed": settings.seed, "references": {
        "plain": f"{settings.references.plain_epochs} epochs, the last weights",
        "peer": f"early stopping on the validation mean AUC, patience {settings.references.patience}, at most "
                f"{settings.references.peer_max_epochs} epochs, the best weights"},
        "datasets": datasets, "seconds": round(time.perf_counter() - start, 1)}
