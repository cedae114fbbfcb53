"""Building and training the plain-PyTorch reference ranker on a recap config, in one process.

Built like `recap train` builds its model (same seed, so the dense part starts from the same weights), with the
torchrec collection swapped for EmbeddingBagTables. It reads the same training batches in the same order (the
project's RecapDataLoader, one rank, the config's batch size, shuffle seed and epochs), and optimizes the same loss:
the dense part with the config's dense optimizer (Adam/AdamW and its learning-rate schedules, the config's gradient
clipping), the tables with torch.optim.Adam at one constant learning rate.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from core.config import ConfigError
from core.distributed import DistributedContext
from core.log import get_logger
from core.loss_window import NonFiniteLossError
from core.optimizers import build_dense_optimizer
from core.progress import Progress
from core.rng_state import seed_everything
from core.train_config import total_train_steps
from projects.home.recap.benchmarks.ids.reference_model import EmbeddingBagTables, ReferenceRankingModel
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.model.factory import build_model_and_loss, large_table_specs
from projects.home.recap.model.loss import ModelAndLoss
from projects.home.recap.model.parameter_groups import dense_parameter_groups
from projects.home.recap.schema import RecapConfig

logger = get_logger(__name__)

# Adam moves a row by about the learning rate in each step whose batch holds its id, and most ids are in few batches:
# tables want a larger rate than dense weights. On 1.5M rows of `recap benchmark ids` data, 0.03 and 0.1 scored
# about the same and both above 0.01 on 9 of the 10 tasks (test RCE within 0.8 of each other on every task).
EMBEDDING_LEARNING_RATE = 0.03


@dataclass
class ReferenceRun:
    """A trained reference model and what its training took."""

    model: ModelAndLoss
    steps: int
    examples: int
    seconds: float


def build_reference(config: RecapConfig) -> tuple[ModelAndLoss, dict[str, list[torch.nn.Parameter]]]:
    """The reference ModelAndLoss of a config and its dense parameter groups (shared and per tower)."""
    seed_everything(config.training.seed)  # as build_training does: the dense part starts from the same weights
    model_and_loss = build_model_and_loss(config, sparse_device="meta")
    groups = dense_parameter_groups(model_and_loss)
    tables = large_table_specs(config)
    model_and_loss.model = ReferenceRankingModel(model_and_loss.model.dense,
                                                 EmbeddingBagTables(tables) if tables else None)
    return model_and_loss, groups


def train_reference(
    config: RecapConfig, ctx: DistributedContext, embedding_learning_rate: float = EMBEDDING_LEARNING_RATE
) -> ReferenceRun:
    """Train the reference on data.train for the config's epochs or steps (this process only; no checkpoints)."""
    training = config.training
    if training.gradient_accumulation_steps != 1:
        raise ConfigError("training.gradient_accumulation_steps: the reference model trains without accumulation; "
                          f"got {training.gradient_accumulation_steps}")
    if config.data.train is None:
        raise ConfigError("data.train: no training dataset is configured")
    tasks = list(config.model.tasks)
    data = RecapDataLoader(config.data, config.data.train, tasks, "train", pin_memory=ctx.device.type == "cuda")
    total_steps = total_train_steps(training, len(data))
    model, groups = build_reference(config)
    model.to(ctx.device)
    dense_optimizer = build_dense_optimizer(model, groups, config.optimizer.dense, total_steps)
    tables = model.model.tables
    table_optimizer = torch.optim.Adam(tables.parameters(), lr=embedding_learning_rate) if tables else None
    dense_params = dense_optimizer.parameters()
    autocast = (torch.autocast(ctx.device.type, dtype=torch.bfloat16) if training.mixed_precision == "bf16"
                else contextlib.nullcontext())
    seed_everything(training.seed * 1_000_003 + ctx.rank)  # dropout and position drops as in rank 0 of training
    model.train()
    step = examples = 0
    # The loss is summed on the device and read only when a line is logged: no synchronization per step.
    window, window_steps, start = torch.zeros((), device=ctx.device), 0, time.perf_counter()
    epoch = 0
    rows = None if total_steps is None else total_steps * config.data.batch_size
    with Progress("training the reference model", rows, enabled=ctx.is_main) as progress:
        while total_steps is None or step < total_steps:
            data.set_epoch(epoch)
            for batch in data:
                batch = batch.to(ctx.device, non_blocking=True)
                dense_optimizer.set_step(step + 1)
                with autocast:
                    loss, _ = model(batch)
                loss.backward()
                if training.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(dense_params, training.clip_grad_norm)
                dense_optimizer.step()
                dense_optimizer.zero_grad()
                if table_optimizer is not None:
                    table_optimizer.step()
                    table_optimizer.zero_grad(set_to_none=True)
                step += 1
                examples += batch.batch_size
                progress.update(batch.batch_size)
                window += loss.detach().float()
                window_steps += 1
                if step % training.train_log_every_n == 0 or step == total_steps:
                    mean = float(window) / window_steps
                    if not math.isfinite(mean):
                        raise NonFiniteLossError(f"reference model: non-finite training loss before step {step}")
                    logger.info("reference step %d/%s epoch %d | loss %.4f | %.0f ex/s", step, total_steps, epoch, mean,
                                examples / (time.perf_counter() - start))
                    window, window_steps = torch.zeros((), device=ctx.device), 0
                if total_steps is not None and step >= total_steps:
                    break
            epoch += 1
    return ReferenceRun(model, step, examples, time.perf_counter() - start)
