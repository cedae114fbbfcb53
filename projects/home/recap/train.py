"""Training the recap ranker: config -> data loaders -> model -> DistributedModelParallel -> the training loop.

Works alone (one process), under torchrun, or on workers started by `recap train --nproc-per-node N`. The periodic
evaluation computes, per validation set and task, the weighted log loss and its RCE against always predicting the
weighted mean label, exactly (sums all-reduced over ranks); ranks with fewer validation batches keep stepping with
zero-weight padding batches so the collective embedding lookups stay in lock step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoint import load_model_weights, resolve_checkpoint
from core.config import ConfigError, dump_yaml
from core.distributed import DistributedContext, all_reduce_sum, init_distributed, lockstep, shard_model
from core.log import get_logger
from core.optimizers import apply_sparse_optimizer, build_dense_optimizer
from core.train_loop import TrainLoop, TrainResult, seed_everything
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.inference import zero_weight
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)

EVAL_DIR = "eval"


class ValidationLoss:
    """Weighted log loss and RCE per task on each validation set, for the training loop's periodic evaluation."""

    def __init__(
        self,
        model: nn.Module,
        loaders: dict[str, RecapDataLoader],
        task_names: list[str],
        loss_weights: list[float],
        ctx: DistributedContext,
        max_steps: int | None = None,
        output_dir: Path | None = None,
        file_name: str = "validation_loss.json",
    ) -> None:
        self.model = model
        self.file_name = file_name
        self.loaders = loaders
        self.task_names = task_names
        self.loss_weights = loss_weights
        self.ctx = ctx
        self.max_steps = max_steps
        self.output_dir = output_dir

    def dataset_sums(self, loader: RecapDataLoader, template: Any) -> torch.Tensor:
        """[3, T] sums over every rank's rows: w * bce(logit, label), w, w * label."""
        sums = torch.zeros(3, len(self.task_names), device=self.ctx.device, dtype=torch.float64)
        for batch, _ in lockstep(loader, zero_weight, self.ctx, template=template, max_steps=self.max_steps):
            batch = batch.to(self.ctx.device, non_blocking=True)
            _, outputs = self.model(batch)
            logits = outputs["logits"].float()
            labels, weights = outputs["labels"].float(), outputs["weights"].float()
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            sums += torch.stack([(weights * bce).sum(0), weights.sum(0), (weights * labels).sum(0)]).double()
        return all_reduce_sum(sums, self.ctx)

    def report(self, step: int, template: Any = None) -> dict[str, dict[str, dict[str, float | None]]]:
        """{dataset: {task: {logloss, rce, pos_rate, count}}} over every rank's rows (all ranks must call it);
        rank 0 also writes it to OUTPUT_DIR/step_N/FILE_NAME."""
        report: dict[str, dict[str, dict[str, float | None]]] = {}
        for name, loader in self.loaders.items():
            loss_sum, weight_sum, label_sum = self.dataset_sums(loader, template).tolist()
            report[name] = {}
            for i, task in enumerate(self.task_names):
                if weight_sum[i] <= 0:
                    continue
                logloss = loss_sum[i] / weight_sum[i]
                rate = label_sum[i] / weight_sum[i]
                baseline = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else None
                rce = 100.0 * (1.0 - logloss / baseline) if baseline else None
                report[name][task] = {"logloss": logloss, "rce": rce, "pos_rate": rate, "count": weight_sum[i]}
        if self.output_dir is not None and self.ctx.is_main:
            directory = self.output_dir / f"step_{step:08d}"
            directory.mkdir(parents=True, exist_ok=True)
            document = {"step": step, "max_batches_per_rank": self.max_steps, "datasets": report}
            (directory / self.file_name).write_text(json.dumps(document, indent=1))
        return report

    def __call__(self, step: int, template: Any = None) -> dict[str, float]:
        """TensorBoard scalars: eval/<set>/loss/<task>, eval/<set>/rce/<task> and eval/<set>/loss (the
        loss-weighted sum over tasks)."""
        metrics: dict[str, float] = {}
        for name, tasks in self.report(step, template).items():
            total = 0.0
            for i, task in enumerate(self.task_names):
                if task not in tasks:
                    continue
                metrics[f"eval/{name}/loss/{task}"] = tasks[task]["logloss"]
                if tasks[task]["rce"] is not None:
                    metrics[f"eval/{name}/rce/{task}"] = tasks[task]["rce"]
                total += self.loss_weights[i] * tasks[task]["logloss"]
            metrics[f"eval/{name}/loss"] = total
        return metrics


def build_training(config: RecapConfig, ctx: DistributedContext) -> tuple[nn.Module, Any, list[str]]:
    """The sharded model (DistributedModelParallel over ModelAndLoss), its dense optimizer and the task names."""
    seed_everything(config.training.seed)
    model_and_loss = build_model_and_loss(config, sparse_device="meta")
    tasks = list(model_and_loss.task_names)
    tables = model_and_loss.model.large_embeddings
    if tables is not None:
        apply_sparse_optimizer(tables.parameters(), config.optimizer.sparse, ctx.device)
    model = shard_model(
        model_and_loss,
        ctx,
        batch_size=config.data.batch_size,
        static_graph=config.training.gradient_accumulation_steps == 1,
    )
    groups = dense_parameter_groups(model)
    dense_optimizer = build_dense_optimizer(model, groups, config.optimizer.dense)
    sizes = ", ".join(f"{name} {sum(p.numel() for p in ps):,}" for name, ps in groups.items())
    logger.info("dense parameters by group: %s", sizes)
    return model, dense_optimizer, tasks


def train(config: RecapConfig, ctx: DistributedContext | None = None) -> TrainResult:
    """Train (resuming from save_dir if it holds checkpoints) and return where training ended."""
    if config.data.train is None:
        raise ConfigError("data.train: no training dataset is configured")
    ctx = ctx or init_distributed(config.training.device)
    save_dir = Path(config.training.save_dir)
    if ctx.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "config.yaml").write_text(dump_yaml(config))
    logger.info("training on %d rank(s), device %s, backend %s", ctx.world_size, ctx.device, ctx.backend)
    model, dense_optimizer, tasks = build_training(config, ctx)
    pin = ctx.device.type == "cuda"
    train_data = RecapDataLoader(config.data, config.data.train, tasks, "train", ctx.rank, ctx.world_size,
                                 pin_memory=pin)
    eval_loaders = {
        name: RecapDataLoader(config.data, dataset, tasks, "eval", ctx.rank, ctx.world_size, pin_memory=pin)
        for name, dataset in config.data.validation.items()
    }
    evaluate = None
    if config.training.eval_every_n is not None and eval_loaders:
        evaluate = ValidationLoss(model, eval_loaders, tasks, [config.model.tasks[t].loss_weight for t in tasks],
                                  ctx, config.training.num_eval_steps, save_dir / EVAL_DIR)
    # Distinct random streams per rank (dropout, position-debias drops) from here on; the model is initialized.
    seed_everything(config.training.seed * 1_000_003 + ctx.rank)
    loop = TrainLoop(
        model,
        dense_optimizer,
        train_data,
        config.training,
        ctx,
        task_names=tasks,
        sparse_optimizer=model.fused_optimizer,
        evaluate=evaluate,
        steps_per_epoch=len(train_data),
    )
    logger.info("%d training batches of %d rows per rank and epoch", len(train_data), train_data.batch_size)
    return loop.run()


def evaluate_checkpoint(
    config: RecapConfig,
    datasets: list[str],
    checkpoint: str | None = None,
    ctx: DistributedContext | None = None,
    max_steps: int | None = None,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Validation loss and RCE of a checkpoint (default: the latest under training.save_dir) on the named
    validation sets over all their rows; writes SAVE_DIR/eval/step_N/validation_loss_all_rows.json."""
    unknown = [d for d in datasets if d not in config.data.validation]
    if unknown:
        raise ConfigError(f"data.validation has no datasets {unknown} (known: {sorted(config.data.validation)})")
    ctx = ctx or init_distributed(config.training.device)
    found = resolve_checkpoint(checkpoint or Path(config.training.save_dir) / "checkpoints")
    model, _, tasks = build_training(config, ctx)
    state = model.state_dict()
    load_model_weights(found.path, state, ctx)
    model.load_state_dict(state)
    loaders = {
        name: RecapDataLoader(config.data, config.data.validation[name], tasks, "eval", ctx.rank, ctx.world_size)
        for name in datasets
    }
    evaluate = ValidationLoss(model, loaders, tasks, [config.model.tasks[t].loss_weight for t in tasks], ctx,
                              max_steps, Path(config.training.save_dir) / EVAL_DIR, "validation_loss_all_rows.json")
    model.eval()
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                              enabled=config.training.mixed_precision == "bf16")
    with torch.no_grad(), autocast:
        return evaluate.report(found.step)
