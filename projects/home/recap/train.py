"""Training the recap ranker: config -> data loaders -> model -> DistributedModelParallel -> the training loop.

Works alone (one process), under torchrun, or on workers started by `recap train --nproc-per-node N`. Every
eval_every_n steps the Evaluator of `recap evaluate` (projects/home/recap/evaluate.py) runs on each set of
training.eval_datasets (default: every validation set), over its first num_eval_steps collective batches or all
of it, and writes SAVE_DIR/eval/<set>/step_<N>/ with metrics.json and the reports; its metrics go to TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from core.checkpoint import list_checkpoints
from core.config import ConfigError, dump_yaml
from core.distributed import DistributedContext, any_rank, init_distributed, shard_model
from core.loader_workers import stop_signals_held
from core.log import get_logger
from core.object_path import ObjectPath
from core.optimizers import apply_sparse_optimizer, build_dense_optimizer, check_schedules
from core.rng_state import seed_everything
from core.run_lock import RunLock, RunLockedError
from core.sparse_optimizers import SparseOptimizers, build_sparse_optimizers
from core.storage import location
from core.storage_ops import move_tree, rmtree
from core.train_config import total_train_steps
from core.train_loop import CHECKPOINT_DIR, TrainLoop, TrainResult
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.validation import scan_labels
from projects.home.recap.evaluate import build_evaluator, validation_loaders
from projects.home.recap.model.compiled import compile_model
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.model.tables import table_constraints, table_optimizer_settings
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)


def build_training(
    config: RecapConfig, ctx: DistributedContext, total_steps: int | None = None
) -> tuple[nn.Module, Any, list[str]]:
    """The sharded model (DistributedModelParallel over ModelAndLoss), its dense optimizer and the task names;
    total_steps (default: training.num_train_steps) ends cosine schedules that leave final_num_steps out."""
    seed_everything(config.training.seed)
    model_and_loss = build_model_and_loss(config, sparse_device="meta")
    tasks = list(model_and_loss.task_names)
    tables = model_and_loss.model.large_table_weights()
    if tables:
        apply_sparse_optimizer(tables, table_optimizer_settings(config))
    model = shard_model(
        model_and_loss,
        ctx,
        batch_size=config.data.batch_size,
        static_graph=config.training.gradient_accumulation_steps == 1,
        constraints=table_constraints(config, ctx.device.type),
    )
    compile_model(model, config.training.compile)
    groups = dense_parameter_groups(model)
    if total_steps is None:
        total_steps = total_train_steps(config.training, None)
    dense_optimizer = build_dense_optimizer(model, groups, config.optimizer.dense, total_steps)
    sizes = ", ".join(f"{name} {sum(p.numel() for p in ps):,}" for name, ps in groups.items())
    logger.info("dense parameters by group: %s", sizes)
    schedules = {repr(s) for s in dense_optimizer.schedules.values()}
    logger.info("dense learning rate: %s", schedules.pop() if len(schedules) == 1 else dense_optimizer.schedules)
    return model, dense_optimizer, tasks


def build_sparse_optimizer(config: RecapConfig, model: nn.Module) -> SparseOptimizers:
    """The sharded model's table optimizers: fused into backward, or row-sparse for data-parallel tables."""
    return build_sparse_optimizers(model, table_optimizer_settings(config))


def train(config: RecapConfig, ctx: DistributedContext | None = None, start_over: bool = False) -> TrainResult:
    """Train (resuming from save_dir if it holds checkpoints) and return where training ended; with start_over,
    every checkpoint in save_dir is moved aside (step_N.replaced) and training starts from step 0."""
    if config.data.train is None:
        raise ConfigError("data.train: no training dataset is configured")
    ctx = ctx or init_distributed(config.training.device)
    save_dir = location(config.training.save_dir)  # a directory or an object-store prefix
    lock = RunLock(save_dir)
    problem = None
    if ctx.is_main:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            if start_over:
                _move_checkpoints_aside(save_dir / CHECKPOINT_DIR)
            else:
                _check_not_past_the_end(config, save_dir / CHECKPOINT_DIR)
            (save_dir / "config.yaml").write_text(dump_yaml(config))
        except OSError as exc:
            problem = f"training.save_dir {save_dir}: cannot write there ({exc.strerror or exc})"
        except RunLockedError as exc:
            problem = f"training.save_dir: {exc}"
        except ConfigError as exc:
            problem = str(exc)
    if any_rank(problem is not None, ctx):
        lock.release()
        raise ConfigError(problem or f"training.save_dir {save_dir}: rank 0 cannot use it (see its log)")
    try:
        return _train(config, ctx, start_over)
    finally:
        lock.release()


def _move_checkpoints_aside(directory: Path | ObjectPath) -> None:
    """--start-over: every checkpoint (healthy or not) is renamed step_N.replaced, so training starts from step 0
    and nothing of the old run is deleted."""
    for checkpoint in list_checkpoints(directory):
        aside = checkpoint.path.with_name(f"{checkpoint.path.name}.replaced")
        rmtree(aside, ignore_errors=True)
        move_tree(checkpoint.path, aside)
        logger.warning("--start-over: moved %s to %s", checkpoint.path, aside.name)


def _check_not_past_the_end(config: RecapConfig, directory: Path | ObjectPath) -> None:
    """A ConfigError when save_dir's newest checkpoint is past training.num_train_steps: resuming would train
    nothing and leave that checkpoint as the run's result under a config.yaml that does not describe it."""
    steps = config.training.num_train_steps
    checkpoints = list_checkpoints(directory)
    if steps is not None and checkpoints and checkpoints[-1].step > steps:
        raise ConfigError(f"training.num_train_steps is {steps}, but {checkpoints[-1].path} is already at step "
                          f"{checkpoints[-1].step}: nothing to train. Raise num_train_steps to continue that run, use "
                          "another training.save_dir, or pass --start-over to train from step 0 (the checkpoints are "
                          "moved aside)")


def _train(config: RecapConfig, ctx: DistributedContext, start_over: bool) -> TrainResult:
    logger.info("training on %d rank(s), device %s, backend %s", ctx.world_size, ctx.device, ctx.backend)
    # The model's task order is the config's (the factory builds one head per model.tasks entry, in order).
    tasks = list(config.model.tasks)
    pin = ctx.device.type == "cuda"
    train_data = RecapDataLoader(config.data, config.data.train, tasks, "train", ctx.rank, ctx.world_size,
                                 pin_memory=pin)
    total_steps = total_train_steps(config.training, len(train_data))
    check_schedules(config.optimizer.dense, total_steps)  # before the model and its sharding plan are built
    model, dense_optimizer, built_tasks = build_training(config, ctx, total_steps)
    if built_tasks != tasks:  # an invariant of the factory, checked because every label column depends on it
        raise RuntimeError(f"the built model's tasks {built_tasks} differ from model.tasks {tasks}")
    evaluate = None
    loaders: dict[str, RecapDataLoader] = {}
    if config.training.eval_every_n is not None:
        # training.eval_datasets, else every validation set (evaluation.datasets picks only `recap evaluate`'s
        # defaults); the schema guarantees data.validation is not empty here.
        names = config.training.eval_datasets or list(config.data.validation)
        loaders = validation_loaders(config, names, tasks, ctx)  # their files' schemas are checked here
        for loader in loaders.values():  # and their labels: a bad set stops the run now, not at its first evaluation
            scan_labels(loader.layout, loader.scanned)
        evaluate = build_evaluator(config, model, ctx, tasks, loaders, config.training.num_eval_steps)
    # Distinct random streams per rank (dropout, position-debias drops) from here on; the model is initialized.
    seed_everything(config.training.seed * 1_000_003 + ctx.rank)
    loop = TrainLoop(
        model,
        dense_optimizer,
        train_data,
        config.training,
        ctx,
        task_names=tasks,
        sparse_optimizer=build_sparse_optimizer(config, model),
        evaluate=evaluate,
        steps_per_epoch=len(train_data),
        start_over=start_over,
    )
    logger.info("%d training batches of %d rows per rank and epoch", len(train_data), train_data.batch_size)
    try:
        return loop.run()
    finally:
        # However training ended (done, stopped by a signal after its checkpoint, an error), the loader workers go
        # first: they ignore stop signals, so nothing else would end them. A stop signal arriving now (a launcher
        # ending the other ranks once one has exited) waits until they are gone.
        with stop_signals_held():
            for loader in (train_data, *loaders.values()):
                loader.close()
