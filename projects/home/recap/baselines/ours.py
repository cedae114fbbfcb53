"""Our model, trained and evaluated as `recap train` and `recap evaluate` do, in this process (one rank)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.distributed import init_distributed, shutdown_distributed
from projects.home.recap.evaluate import evaluate_checkpoint
from projects.home.recap.schema import RecapConfig
from projects.home.recap.train import train


@dataclass
class OursResult:
    """The test split's metrics.json task blocks, and where the run is."""

    tasks: dict[str, dict]
    steps: int
    checkpoint: str
    save_dir: str
    seconds: float


def train_and_evaluate(config: RecapConfig, test: str = "test") -> OursResult:
    """Train the config from scratch (its save_dir must hold no run) and evaluate on `test` the checkpoint `recap
    evaluate` would: the best one when training.early_stopping marked it, else the last."""
    start = time.perf_counter()
    ctx = init_distributed(config.training.device)
    result = train(config, ctx)
    found, documents = evaluate_checkpoint(config, None, [test], ctx)
    # Only after success, as shutdown_distributed asks; the next data set's run starts a fresh process group.
    shutdown_distributed()
    return OursResult(tasks=documents[test]["tasks"], steps=result.step, checkpoint=str(found.path),
                      save_dir=str(config.training.save_dir), seconds=time.perf_counter() - start)
