"""Running a trained recap model outside training: find the checkpoint, load its weights strictly, and push batches
through the model in eval mode.

Two ways to hold the model:
  - `load_for_inference`: one process, an unsharded ModelAndLoss on the CPU with every embedding table materialized
    (export, in-process scoring); the checkpoint may have been written by any number of ranks.
  - `load_sharded_for_inference`: the DistributedModelParallel every rank of a job builds (evaluation, batch
    prediction); its forward pass is a collective, so `run_model` keeps the ranks in lock step.
Loading is strict: every tensor of the model must be in the checkpoint with the model's shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from common.batch import RecapBatch
from core.checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from core.checkpoint_dcp import load_tensors
from core.checkpoint_manager import CheckpointManager
from core.compile import CompileClock
from core.distributed import DistributedContext, lockstep, shard_model
from core.log import get_logger
from core.storage import location
from core.train_loop import CHECKPOINT_DIR
from projects.home.recap.data import sharding
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.mode import Mode
from projects.home.recap.model.compiled import compile_model
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.loss import ModelAndLoss
from projects.home.recap.model.tables import table_constraints
from projects.home.recap.schema import RecapConfig

__all__ = [
    "BEST",
    "DEFAULT",
    "LATEST",
    "find_checkpoint",
    "inference_mode",
    "load_for_inference",
    "load_sharded_for_inference",
    "load_weights",
    "padding_batch",
    "rank_rows",
    "run_model",
    "zero_weight",
]

logger = get_logger(__name__)

LATEST = "latest"
BEST = "best"
# The run's own choice: its best checkpoint when training.early_stopping marked one, else its newest.
DEFAULT = "default"
_STATE_KEY = "model"  # the training loop saves the model's state_dict under this key


def find_checkpoint(config: RecapConfig, checkpoint: str | os.PathLike | None = DEFAULT) -> Checkpoint:
    """The checkpoint named by a step directory, a checkpoints directory or a run's save_dir (its best when marked,
    else its newest), or by "default"/None, "best" or "latest" (that checkpoint under training.save_dir). Logs
    which one it picked."""
    name = DEFAULT if checkpoint is None else str(checkpoint)
    if name in (DEFAULT, BEST, LATEST):
        directory = location(config.training.save_dir) / CHECKPOINT_DIR
        if not directory.exists():
            raise CheckpointError(f"no checkpoint yet: {directory} (training.save_dir/{CHECKPOINT_DIR}) does not "
                                  "exist")
        path = directory if name == DEFAULT else directory / name
    else:
        path = location(checkpoint)
        if not path.exists() and path.name not in (BEST, LATEST):
            raise CheckpointError(f"checkpoint {path} does not exist")
    return resolve_checkpoint(path, announce=True)


def _local_context() -> DistributedContext:
    return DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")


def load_weights(model: nn.Module, checkpoint: Checkpoint, ctx: DistributedContext | None = None) -> None:
    """Load the model weights of `checkpoint` into `model` (a ModelAndLoss, sharded or not); every tensor of the
    model must be in the checkpoint with the same shape. Collective when ctx spans several ranks."""
    ctx = ctx or _local_context()
    CheckpointManager(checkpoint.path.parent, ctx).verify(checkpoint)
    state = model.state_dict()
    # load_tensors first checks every tensor is in the checkpoint with its shape (CheckpointMismatchError).
    load_tensors(checkpoint.path, {_STATE_KEY: state})
    model.load_state_dict(state)
    logger.info("loaded %d weight tensors from %s (step %d)", len(state), checkpoint.path, checkpoint.step)


def load_for_inference(config: RecapConfig, checkpoint: str | os.PathLike | None = DEFAULT) -> ModelAndLoss:
    """One process: an unsharded ModelAndLoss on the CPU in eval mode, tables materialized, with the weights of a
    (possibly multi-rank, sharded) checkpoint: a checkpoint directory, a run's save_dir or checkpoints dir, or
    "latest"."""
    found = find_checkpoint(config, checkpoint)
    # Tables start on "meta" and get uninitialized CPU memory: every value is then read from the checkpoint.
    model_and_loss = build_model_and_loss(config, sparse_device="meta")
    for tables in model_and_loss.model.table_modules():
        tables.to_empty(device="cpu")
    load_weights(model_and_loss, found)
    return model_and_loss.eval()


def load_sharded_for_inference(
    config: RecapConfig, checkpoint: str | os.PathLike | None, ctx: DistributedContext, batch_size: int | None = None
) -> tuple[nn.Module, Checkpoint]:
    """Every rank: the model sharded over the job with DistributedModelParallel and the checkpoint's weights
    (collective); returns it with the checkpoint it was loaded from."""
    found = find_checkpoint(config, checkpoint)
    model = shard_model(
        build_model_and_loss(config, sparse_device="meta"),
        ctx,
        batch_size=batch_size or config.data.eval_batch_size or config.data.batch_size,
        constraints=table_constraints(config, ctx.device.type),
    )
    load_weights(model, found, ctx)
    compile_model(model, config.training.compile)
    return model, found


def zero_weight(batch: RecapBatch) -> RecapBatch:
    """The same rows with every weight 0: a padding batch that counts for nothing."""
    return dataclasses.replace(batch, weights=torch.zeros_like(batch.weights))


def padding_batch(data: DataConfig, dataset: DatasetConfig, tasks: list[str], mode: Mode) -> RecapBatch:
    """A one-row batch of the dataset, for a rank that has no rows of its own but must join collective steps."""
    loader = RecapDataLoader(data, dataset, tasks, mode, rank=0, world_size=1, batch_size=1, num_workers=0)
    return zero_weight(next(iter(loader)))


def rank_rows(batches: Any, ctx: DistributedContext, max_batches: int | None = None) -> int | None:
    """The rows this rank's eval or predict pass will take from `batches` (for progress; None unless it is a
    RecapDataLoader, whose rank's range is known from the scan without reading)."""
    if not isinstance(batches, RecapDataLoader):
        return None
    # Eval and predict loaders keep every row (no drop_last), split evenly over the ranks.
    start, stop = sharding.rank_range(batches.num_rows, ctx.rank, ctx.world_size, batches.batch_size, False)
    rows = stop - start
    return rows if max_batches is None else min(rows, max_batches * batches.batch_size)


@contextlib.contextmanager
def inference_mode(model: nn.Module, device: torch.device, bf16: bool) -> Iterator[None]:
    """Eval mode, no gradients and (bf16) autocast for the duration; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            yield
    finally:
        model.train(was_training)


def run_model(
    model: nn.Module,
    batches: Any,
    ctx: DistributedContext,
    template: RecapBatch | None = None,
    max_batches: int | None = None,
) -> Iterator[tuple[RecapBatch, dict[str, torch.Tensor]]]:
    """(batch on ctx.device, model outputs) for each of this rank's batches; while other ranks still have batches,
    a rank that ran out runs zero-weight padding batches (its last batch, or `template`) that are not yielded."""
    clock = CompileClock()  # logs the batches during which torch.compile built graphs (training.compile)
    for i, (batch, real) in enumerate(lockstep(batches, zero_weight, ctx, template=template, max_steps=max_batches)):
        batch = batch.to(ctx.device, non_blocking=True)
        with clock.measure(f"inference batch {i} ({batch.batch_size} rows)"):
            _, outputs = model(batch)
        if real:
            yield batch, outputs
