"""Tiny synthetic data and a small version of the demo config for the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.checkpoint import resolve_checkpoint
from core.checkpoint_manager import CheckpointManager
from core.distributed import DistributedContext, init_distributed, shutdown_distributed
from projects.home.recap.data.synthetic import generate
from projects.home.recap.schema import RecapConfig, load_recap_config

REPO = Path(__file__).resolve().parents[4]
DEMO = REPO / "projects" / "home" / "recap" / "config" / "demo.yaml"
# 4020 rows: 3618 train, 201 validation, 201 test. With 2 ranks and eval batches of 100, rank 0 evaluates 100
# validation rows in 1 batch and rank 1 evaluates 101 rows in 2: rank 0 must pad one collective step.
ROWS = 4020


def make_data(directory: Path) -> Path:
    generate(directory, ROWS, seed=3, rows_per_file=1000, row_group_size=250)
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The module's generated data (make_data); import it into a test module to use it."""
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ctx():
    """A one-process CPU distributed context for the module's in-process trainings."""
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def overrides(data_dir: Path, save_dir: Path, steps: int, **training) -> list[str]:
    """--set values: the demo model with small tables, batches of 32 and `steps` steps."""
    values = {
        "data.train.paths": f"[{data_dir}/train]",
        "data.validation.validation.paths": f"[{data_dir}/validation]",
        "data.validation.test.paths": f"[{data_dir}/test]",
        "data.batch_size": 32,
        "data.eval_batch_size": 100,
        "data.num_workers": 0,
        "data.shuffle_buffer_rows": 256,
        # A short warm-up the tests can check step by step (the demo's cosine needs longer runs).
        "optimizer.dense.learning_rate": "{linear_ramp_to_constant: {learning_rate: 0.002, num_ramp_steps: 100}}",
        "model.large_embeddings.0.num_embeddings": 500,
        "model.large_embeddings.1.num_embeddings": 300,
        "model.large_embeddings.2.num_embeddings": 200,
        "training.save_dir": str(save_dir),
        "training.num_epochs": "null",
        "training.num_train_steps": steps,
        "training.train_log_every_n": 5,
        "training.checkpoint_every_n": 10,
        "training.eval_every_n": "null",
        "training.num_eval_steps": "null",
        "training.eval_datasets": "[]",
        "evaluation.datasets": "[]",
    }
    values.update({f"training.{k}": v for k, v in training.items()})
    return [f"{k}={v}" for k, v in values.items()]


def config(data_dir: Path, save_dir: Path, steps: int, **training) -> RecapConfig:
    return load_recap_config(DEMO, overrides(data_dir, save_dir, steps, **training))


def recap(*args: str, timeout: float = 240, env: dict | None = None, runner: list[str] | None = None):
    """Run the recap command line (or `runner` + args) in a subprocess from the repository root."""
    command = (runner or [sys.executable, "-m", "projects.home.recap.main"]) + list(args)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


def set_args(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def checkpoint_state(config: RecapConfig, ctx: DistributedContext, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (model, dense and sparse optimizer states) loaded into a freshly built
    training setup, as CPU tensors keyed by name."""
    from projects.home.recap.train import build_sparse_optimizer, build_training

    model, dense, _ = build_training(config, ctx)
    tensors = {
        "model": model.state_dict(),
        "dense_optimizer": dense.state_tensors(),
        "sparse_optimizer": build_sparse_optimizer(config, model).state_dict()["state"],
    }
    found = resolve_checkpoint(path)
    CheckpointManager(found.path.parent, ctx).load(found, tensors)
    out = {}

    def collect(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                collect(f"{prefix}/{key}", value)
            return
        if hasattr(node, "local_shards"):
            node = torch.cat([s.tensor for s in node.local_shards()])
        out[prefix] = node.detach().cpu().clone()

    collect("", tensors)
    return out
