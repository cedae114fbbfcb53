"""`recap evaluate --watch`: every checkpoint of a run evaluated as training writes it, rank 0 deciding which comes
next for every rank, until the training's final step (or its early stop) or a timeout."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import torch.distributed as dist

from core.checkpoint import Checkpoint, CheckpointError, list_checkpoints, read_best, read_info
from core.config import ConfigError
from core.distributed import DistributedContext
from core.log import get_logger
from core.storage import location
from core.train_config import total_train_steps
from core.train_loop import CHECKPOINT_DIR
from projects.home.recap.data import sharding
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.evaluate import build_evaluator, evaluation_datasets, validation_loaders
from projects.home.recap.inference import load_sharded_for_inference, load_weights
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)


def final_step(config: RecapConfig, world_size: int) -> int | None:
    """The step of the training's last checkpoint: total_train_steps of the training config, with the batches per
    epoch that world_size ranks take from data.train when it runs in epochs (None when that cannot be scanned)."""
    training = config.training
    steps_per_epoch = None
    if training.num_train_steps is None and config.data.train is not None:
        try:
            rows = scan_dataset(config.data.train.paths, config.data.ignore_data_errors).num_rows
        except (OSError, ValueError) as exc:
            logger.warning("cannot tell the final training step (%s); --watch stops at its timeout", exc)
            return None
        steps_per_epoch = sharding.train_batches_per_rank(rows, world_size, config.data.batch_size)
    return total_train_steps(training, steps_per_epoch)


def _broadcast(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's value on every rank."""
    if ctx.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _is_final(config: RecapConfig, checkpoint: Checkpoint) -> bool:
    try:
        world_size = int(read_info(checkpoint.path).get("world_size", 1))
    except CheckpointError:
        return False
    last = final_step(config, world_size)
    try:
        selection = read_best(checkpoint.path.parent)
    except CheckpointError:
        selection = None
    if selection is not None and selection.get("stopped_at") == checkpoint.step:
        return True  # training stopped early here: no later checkpoint will come
    return last is not None and checkpoint.step >= last


def watch_checkpoints(
    config: RecapConfig,
    ctx: DistributedContext,
    datasets: list[str] | None = None,
    directory: str | os.PathLike | None = None,
    poll_seconds: float = 30.0,
    timeout: float | None = None,
) -> list[int]:
    """Evaluate every checkpoint in `directory` (default training.save_dir/checkpoints), oldest first, then each new
    one as training writes it; stop after the final one (step = the training's last step) or when no new checkpoint
    appeared for `timeout` seconds. Collective; returns the evaluated steps."""
    tasks = list(config.model.tasks)
    loaders = validation_loaders(config, evaluation_datasets(config, datasets), tasks, ctx)
    directory = location(directory) if directory is not None else location(config.training.save_dir) / CHECKPOINT_DIR
    if (directory / CHECKPOINT_DIR).is_dir():
        directory = directory / CHECKPOINT_DIR  # a run's save_dir
    elif re.fullmatch(r"step_\d+", directory.name):
        raise ConfigError(f"--watch needs a checkpoints directory or a run's save_dir, not the checkpoint {directory}")
    model = evaluator = None
    done: list[int] = []
    last_new = time.monotonic()
    while True:
        decision: tuple[str, int] | str | None = None
        if ctx.is_main:
            pending = [c for c in list_checkpoints(directory) if not done or c.step > done[-1]]
            if pending:
                decision = (str(pending[0].path), pending[0].step)
            elif timeout is not None and time.monotonic() - last_new > timeout:
                decision = "timeout"
        decision = _broadcast(decision, ctx)
        if decision == "timeout":
            logger.warning("no new checkpoint in %s for %.0f s: stopping (evaluated steps %s)", directory, timeout,
                           done)
            return done
        if decision is None:
            time.sleep(poll_seconds)
            continue
        path, step = decision
        checkpoint = Checkpoint(location(path), step)
        last_new = time.monotonic()
        try:
            if model is None:
                model, _ = load_sharded_for_inference(config, checkpoint.path, ctx)
                evaluator = build_evaluator(config, model, ctx, tasks, loaders)
            else:
                load_weights(model, checkpoint, ctx)
        except CheckpointError as exc:
            # Pruned (keep_last_k) or written by another run while being read: skip it.
            logger.warning("skipping %s: %s", checkpoint.path, exc)
            done.append(step)
            continue
        assert evaluator is not None
        documents = evaluator.evaluate(step, checkpoint=str(checkpoint.path))
        evaluator.write_tensorboard(documents, step)
        done.append(step)
        if _broadcast(_is_final(config, checkpoint) if ctx.is_main else None, ctx):
            logger.info("step %d is the training's final step: stopping", step)
            return done
