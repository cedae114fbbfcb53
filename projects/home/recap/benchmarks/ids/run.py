"""`recap benchmark ids`: generate the collaborative data if absent, train our model (`recap train`'s path) and the
plain-PyTorch reference on the same training files, evaluate both on the same validation sets with the project's
evaluator, and collect the figures into one document (projects/home/recap/benchmarks/ids/table.py prints it).

One process (one rank): both models see the same batches in the same order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.distributed import init_distributed, launched_by_torchrun, shutdown_distributed
from core.log import get_logger
from core.metrics import METRIC_KEYS
from projects.home.recap.benchmarks.ids.reference_training import EMBEDDING_LEARNING_RATE, train_reference
from projects.home.recap.data.synthetic import SyntheticSpec, generate
from projects.home.recap.evaluate import (
    build_evaluator,
    evaluate_checkpoint,
    evaluation_datasets,
    validation_loaders,
)
from projects.home.recap.schema import RecapConfig, load_recap_config
from projects.home.recap.train import train

logger = get_logger(__name__)

IDS_CONFIG = Path(__file__).resolve().parents[2] / "config" / "ids.yaml"
SPLITS = ("train", "validation", "test")
# Rows generated when the data directory is empty: one epoch of both models, evaluation included, in about
# 5-10 minutes on 2 CPU cores.
DEFAULT_ROWS = 2_000_000
OURS, REFERENCE = "ours", "reference"


@dataclass(frozen=True)
class IdBenchmarkSettings:
    """What `recap benchmark ids` runs: the config and its overrides, where data and runs go, how data is made."""

    save_dir: Path
    config: Path = IDS_CONFIG
    overrides: tuple[str, ...] = ()
    data_dir: Path = Path("data/ids")
    rows: int = DEFAULT_ROWS
    seed: int = 0
    collaborative_dim: int = 4
    collaborative_strength: float = 1.0
    embedding_learning_rate: float = EMBEDDING_LEARNING_RATE
    datasets: tuple[str, ...] = ()  # validation sets to evaluate (default: evaluation.datasets)


def has_data(data_dir: Path) -> bool:
    """Whether every split of data_dir holds parquet files."""
    return all(any((data_dir / split).glob("*.parquet")) for split in SPLITS)


def ensure_data(settings: IdBenchmarkSettings) -> dict | None:
    """Generate the collaborative data set into settings.data_dir unless it is there; what was generated, or None."""
    if has_data(settings.data_dir):
        logger.info("using the existing data in %s", settings.data_dir)
        return None
    # One impression per request: the data its published figures were measured on.
    spec = SyntheticSpec(collaborative_dim=settings.collaborative_dim,
                         collaborative_strength=settings.collaborative_strength, candidates_per_request=1)
    logger.info("generating %d rows with a collaborative signal of %d dimensions (strength %g) in %s",
                settings.rows, settings.collaborative_dim, settings.collaborative_strength, settings.data_dir)
    start = time.perf_counter()
    sizes = generate(settings.data_dir, settings.rows, settings.seed, spec=spec, processes=min(2, os.cpu_count() or 1))
    return {"rows": sizes, "seed": settings.seed, "collaborative_dim": settings.collaborative_dim,
            "collaborative_strength": settings.collaborative_strength,
            "seconds": round(time.perf_counter() - start, 1)}


def benchmark_config(settings: IdBenchmarkSettings) -> RecapConfig:
    """The experiment both models are built from: the config, its overrides, training.save_dir = SAVE_DIR/ours."""
    os.environ["RECAP_DATA_DIR"] = str(settings.data_dir)  # the shipped config reads its paths from it
    ours = settings.save_dir / OURS
    return load_recap_config(settings.config, [*settings.overrides, f"training.save_dir={ours}"])


def _with_save_dir(config: RecapConfig, save_dir: Path) -> RecapConfig:
    return config.model_copy(update={"training": config.training.model_copy(update={"save_dir": str(save_dir)})})


def _figures(metrics: dict) -> dict:
    """{task: {metric: value}} of a metrics.json document, without strata."""
    return {task: {k: block.get(k) for k in (*METRIC_KEYS, "rows")} for task, block in metrics["tasks"].items()}


def run_id_benchmark(settings: IdBenchmarkSettings) -> dict:
    """Run the whole benchmark and return its document: settings, timings and per-dataset, per-task figures of our
    model, the reference and the data's oracle."""
    if launched_by_torchrun():
        raise SystemExit("recap benchmark ids runs in one process: start it without torchrun")
    checkpoints = settings.save_dir / OURS / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise SystemExit(f"{checkpoints} already holds a run (training would resume it): choose a new --save-dir")
    start = time.perf_counter()
    generated = ensure_data(settings)
    config = benchmark_config(settings)
    tasks = list(config.model.tasks)
    datasets = evaluation_datasets(config, list(settings.datasets) or None)
    ctx = init_distributed(config.training.device)
    try:
        phase = time.perf_counter()
        result = train(config, ctx)
        ours_train = time.perf_counter() - phase
        phase = time.perf_counter()
        checkpoint, ours_docs = evaluate_checkpoint(config, result.checkpoint, datasets, ctx)
        ours_eval = time.perf_counter() - phase
        logger.info("training the reference model (embedding tables: Adam at %g)", settings.embedding_learning_rate)
        reference = train_reference(config, ctx, settings.embedding_learning_rate)
        phase = time.perf_counter()
        reference_config = _with_save_dir(config, settings.save_dir / REFERENCE)
        loaders = validation_loaders(config, datasets, tasks, ctx)
        evaluator = build_evaluator(reference_config, reference.model, ctx, tasks, loaders)
        reference_docs = evaluator.evaluate(reference.steps)
        reference_eval = time.perf_counter() - phase
    finally:
        shutdown_distributed()
    figures = {}
    for name in datasets:
        ours, ref = _figures(ours_docs[name]), _figures(reference_docs[name])
        figures[name] = {
            task: {
                "pos_rate": block.get("pos_rate"),
                "rows": block.get("rows"),
                OURS: ours[task],
                REFERENCE: ref[task],
                "oracle": {k: (block.get("oracle") or {}).get(k) for k in ("auc", "rce")},
            }
            for task, block in ours_docs[name]["tasks"].items()
        }
    return {
        "config": str(settings.config),
        "overrides": list(settings.overrides),
        "data_dir": str(settings.data_dir),
        "generated": generated,
        OURS: {"save_dir": str(settings.save_dir / OURS), "checkpoint": str(checkpoint.path), "steps": result.step,
               "train_seconds": round(ours_train, 1), "eval_seconds": round(ours_eval, 1),
               "sparse_optimizer": config.optimizer.sparse.model_dump()},
        REFERENCE: {"save_dir": str(settings.save_dir / REFERENCE), "steps": reference.steps,
                    "train_seconds": round(reference.seconds, 1), "eval_seconds": round(reference_eval, 1),
                    "embedding_optimizer": {"type": "adam", "learning_rate": settings.embedding_learning_rate}},
        "datasets": figures,
        "seconds": round(time.perf_counter() - start, 1),
    }
