"""A realistic run directory: evaluations at two steps written by the accumulator, and TensorBoard scalars."""

from pathlib import Path

import numpy as np
import pytest
import torch

from core.metrics_accumulator import MetricsAccumulator
from core.report import eval_step_dir, write_metrics_to_tensorboard, write_report

TASKS = ["fav", "reply", "report"]  # "report" never has a positive


def evaluate(noise: float, seed: int = 0, rows: int = 400, dataset: str = "test", step: int = 200):
    """metrics and curves documents for synthetic predictions `noise` away from the oracle."""
    rng = np.random.default_rng(seed)
    oracle = rng.uniform(0.02, 0.5, (rows, 3))
    labels = (rng.uniform(size=(rows, 3)) < oracle).astype(np.float32)
    labels[:, 2] = 0
    preds = np.clip(oracle + rng.normal(0, noise, oracle.shape), 0.001, 0.999)
    acc = MetricsAccumulator()
    acc.update(torch.tensor(preds), torch.tensor(labels), torch.ones(rows, 3),
               stratifiers=torch.tensor(rng.integers(0, 3, (rows, 1))),
               group_ids=torch.tensor(rng.integers(0, 30, rows)), oracle=torch.tensor(oracle))
    metrics = acc.compute(TASKS, ["client"], dataset=dataset, step=step, checkpoint=f"ckpt/{step}")
    curves = acc.curves(TASKS, 50, dataset=dataset, step=step, checkpoint=f"ckpt/{step}")
    return metrics, curves


def build_run(root: Path, noise: float, loss_scale: float = 1.0) -> Path:
    """A save_dir with eval/test/step_100 and step_200, eval/valid/step_200 and a tensorboard/ directory."""
    from torch.utils.tensorboard import SummaryWriter

    for dataset, step, extra in (("test", 100, 0.3), ("test", 200, 0.0), ("valid", 200, 0.0)):
        metrics, curves = evaluate(noise + extra, dataset=dataset, step=step)
        write_report(eval_step_dir(root, dataset, step), metrics, curves)
    writer = SummaryWriter(str(root / "tensorboard"))
    for step in range(0, 201, 10):
        writer.add_scalar("loss/fav", loss_scale / (1 + step), step)
        writer.add_scalar("loss/reply", 2 * loss_scale / (1 + step), step)
        writer.add_scalar("throughput/examples_per_second", 1000.0 + step, step)
    write_metrics_to_tensorboard(writer, evaluate(noise, dataset="test", step=200)[0])
    writer.close()
    return root


@pytest.fixture
def make_evaluation():
    """evaluate(noise, seed=0, rows=400, dataset="test", step=200) -> (metrics, curves)."""
    return evaluate


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path / "good_run", noise=0.05)


@pytest.fixture
def baseline_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path / "baseline_run", noise=0.25, loss_scale=2.0)
