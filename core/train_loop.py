"""The training loop: steps or epochs, gradient accumulation, clipping, bf16 autocast, logging to the console and
TensorBoard, periodic evaluation, and checkpoints with automatic resume. Project-agnostic: it needs a model whose
forward(batch) returns (loss, outputs) -- outputs["task_losses"] [T] when there are task names -- a DenseOptimizer,
optionally the sparse optimizer fused into backward, and resumable training data.

Between log steps the loop never waits for the device: losses accumulate in a tensor and are read (with one
all-reduce) only when a line is logged, a checkpoint is written or evaluation runs. A non-finite loss is therefore
noticed at the next of those points, always before a checkpoint could record it.

On CUDA, a torchrec DistributedModelParallel trains through torchrec's TrainPipelineSparseDist, which overlaps the
next batches' host-to-device copies and sparse all-to-alls with the current step; the loop's own per-step work is
unchanged. CPU training takes the plain path.

Its parts live beside it: the data read epoch after epoch (core/train_data.py), the reporting window
(core/loss_window.py), torchrec's pipeline (core/train_pipeline.py), stop signals (core/stop_signals.py), the random
generators a checkpoint records (core/rng_state.py) and model selection (core/early_stopping.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from core.checkpoint import Checkpoint
from core.checkpoint_manager import CheckpointManager, load_model_weights
from core.compile import CompileClock
from core.distributed import DistributedContext, average_buffers, data_parallel_module
from core.early_stopping import ModelSelection
from core.log import get_logger
from core.loss_window import LossWindow
from core.progress import step_bar
from core.rng_state import rng_state, set_rng_state
from core.stop_signals import TrainingStopped, signal_on_any_rank, stop_signals
from core.storage import location
from core.tensorboard import MetricsWriter
from core.train_config import TrainingConfig, total_train_steps
from core.train_data import Epochs, ResumableData, next_batch, to_device
from core.train_pipeline import PipelinedSteps, PipelineFeed, pipeline_problem, wants_pipeline

if TYPE_CHECKING:  # core.optimizers imports torchrec; the loop itself runs dense-only models without it
    from core.optimizers import DenseOptimizer

logger = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class SparseOptimizer(Protocol):
    """The tables' optimizers (core/sparse_optimizers.py SparseOptimizers): state by parameter name, and a step for
    the tables that are not updated inside backward."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def step(self) -> None: ...


# evaluate(step, template_batch) -> {TensorBoard tag: value}; runs under no_grad with the model in eval mode.
# template_batch is a recent training batch, for ranks that must pad collective evaluation steps.
Evaluate = Callable[[int, Any], dict[str, float]]


@dataclass
class TrainResult:
    step: int
    epoch: int
    checkpoint: Path | None
    resumed_from: Path | None = None
    last_train_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_metrics: dict[str, float] = field(default_factory=dict)


class TrainLoop:
    """Runs training to the configured step or epoch count; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        dense_optimizer: DenseOptimizer,
        train_data: ResumableData,
        config: TrainingConfig,
        ctx: DistributedContext,
        task_names: Sequence[str] = (),
        sparse_optimizer: SparseOptimizer | None = None,
        evaluate: Evaluate | None = None,
        steps_per_epoch: int | None = None,
        start_over: bool = False,
        use_train_pipeline: bool | None = None,
    ) -> None:
        self.model = model
        self.dense_optimizer = dense_optimizer
        self.sparse_optimizer = sparse_optimizer
        self.train_data = train_data
        self.config = config
        self.ctx = ctx
        self.task_names = list(task_names)
        self.evaluate = evaluate
        self.steps_per_epoch = steps_per_epoch
        # Train from step 0 when every checkpoint in save_dir is broken (they are moved aside) instead of stopping.
        self.start_over = start_over
        self.save_dir = location(config.save_dir)  # a directory, or an object-store prefix (core/storage.py)
        self.checkpoints = CheckpointManager(self.save_dir / CHECKPOINT_DIR, ctx, config.keep_last_k)
        self._epochs = Epochs(train_data, config.num_epochs, ctx.rank)
        self.step = 0
        self.examples = 0  # global examples trained on
        self._last_batch: Any = None
        self._last_checkpoint: Checkpoint | None = None
        self._autocast_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else None
        self._dense_params = dense_optimizer.parameters()
        # The per-step stop-signal flag lives on the host: under NCCL a gloo group carries it, so checking it costs
        # no device synchronization (gloo runs already keep it on the CPU).
        self._stop_group = (dist.new_group(backend="gloo")
                            if ctx.world_size > 1 and ctx.backend != "gloo" else None)
        self._ddp = data_parallel_module(model)
        # torchrec's TrainPipelineSparseDist: None uses it where it helps (CUDA and a DistributedModelParallel),
        # True insists (an error says why it cannot), False never; see core/train_pipeline.py.
        self.use_train_pipeline = use_train_pipeline
        self._pipelined: PipelinedSteps | None = None
        # Logs the training steps during which torch.compile built graphs, with their time.
        self.compile_clock = CompileClock()
        self.model_selection = (ModelSelection(config.early_stopping, self.task_names, self.checkpoints, ctx,
                                               self._stop_group)
                                if config.early_stopping is not None and evaluate is not None else None)
        self._window = LossWindow(len(self.task_names), ctx.device, first_step=self.step + 1)

    @property
    def epoch(self) -> int:
        """The epoch being trained (the epochs trained once the data has ended)."""
        return self._epochs.epoch

    # --- state ---------------------------------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Any]:
        tensors: dict[str, Any] = {
            "model": self.model.state_dict(),
            "dense_optimizer": self.dense_optimizer.state_tensors(),
        }
        if self.sparse_optimizer is not None:
            tensors["sparse_optimizer"] = self.sparse_optimizer.state_dict()["state"]
        return tensors

    def _save(self) -> Checkpoint:
        epoch, data_state = self._data_position()
        info = {
            "step": self.step,
            "epoch": epoch,
            "examples": self.examples,
            "seed": self.config.seed,
            "learning_rates": self.dense_optimizer.learning_rates,
        }
        rank_info = {"data": data_state, "rng": rng_state()}
        average_buffers(self.model, self.ctx)
        self._last_checkpoint = self.checkpoints.save(self.step, self._state_tensors(), info, rank_info)
        return self._last_checkpoint

    def _checkpoint_step(self) -> None:
        """Write the checkpoint of this step unless it exists."""
        if self._last_checkpoint is None or self._last_checkpoint.step != self.step:
            self._save()

    def restore(self) -> Checkpoint | None:
        """Resume from the newest good checkpoint under save_dir, else warm start if configured; returns the
        checkpoint resumed from (None for a fresh or warm-started run)."""
        tensors = self._state_tensors()
        loaded = self.checkpoints.load_latest(tensors, start_over=self.start_over)
        if loaded is None:
            if self.config.warm_start_from:
                load_model_weights(self.config.warm_start_from, tensors["model"], self.ctx)
                self.model.load_state_dict(tensors["model"])
            return None
        checkpoint, info, rank_info = loaded
        self.model.load_state_dict(tensors["model"])
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.load_state_dict({"state": tensors["sparse_optimizer"]})
        self.step = int(info["step"])
        self._epochs.epoch = int(info["epoch"])
        self.examples = int(info.get("examples", 0))
        if info.get("seed") != self.config.seed:
            logger.warning("resuming a run started with seed %s under seed %s", info.get("seed"), self.config.seed)
        if rank_info is None:
            logger.warning(
                "%s was written by a different number of ranks: the data restarts at the beginning of epoch %d "
                "and random generators are not restored", checkpoint.path, self.epoch
            )
        else:
            self._epochs.restore(rank_info["data"])
            set_rng_state(rank_info["rng"])
        self._last_checkpoint = checkpoint
        logger.info("resumed from %s (step %d, epoch %d)", checkpoint.path, self.step, self.epoch)
        return checkpoint

    # --- data ------------------------------------------------------------------------------------------------------------
    def _data_position(self) -> tuple[int, dict]:
        """(epoch, data state) of the first batch not trained on yet: what a checkpoint records. The pipeline pulls
        batches ahead of training; their positions were noted when they were pulled."""
        if self._pipelined is not None and self._pipelined.feed.positions:
            return self._pipelined.feed.positions[0]
        return self._epochs.position()

    # --- one optimizer step ------------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self._autocast_dtype)

    def _train_step(self, data: Iterator[Any]) -> bool:
        """Forward/backward over up to gradient_accumulation_steps batches, then one update; False if the data
        ended before the first batch."""
        accumulation = self.config.gradient_accumulation_steps
        micro = 0
        while micro < accumulation:
            batch = next_batch(data)
            if batch is None:
                break
            batch = to_device(batch, self.ctx.device)
            no_sync = self._ddp is not None and micro < accumulation - 1
            with self._ddp.no_sync() if no_sync else contextlib.nullcontext():
                with self._autocast():
                    loss, outputs = self.model(batch)
                (loss / accumulation).backward()
            self._account(batch, loss, outputs)
            micro += 1
        if micro == 0:
            return False
        if micro < accumulation and self._ddp is not None and self.ctx.world_size > 1:
            # The data ended inside an accumulation window whose gradients were not synchronized yet.
            for p in self._dense_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.ctx.world_size)
        self._update()
        return True

    def _account(self, batch: Any, loss: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        """Add one batch's loss and size to the reporting window (no device synchronization)."""
        self._window.account(batch, loss, outputs)
        self._last_batch = batch

    def _update(self) -> None:
        """The optimizer step after backward: clipping, the dense optimizer, the row-sparse tables; step += 1."""
        self.dense_optimizer.set_step(self.step + 1)
        grad_norm = self.dense_optimizer.step(clip_grad_norm=self.config.clip_grad_norm)
        if grad_norm is not None:
            self._window.grad_norm = grad_norm
        self.dense_optimizer.zero_grad()
        if self.sparse_optimizer is not None:
            # Tables outside the fused backward (data-parallel ones) are updated here, once per optimizer step.
            self.sparse_optimizer.step()
        self.step += 1

    # --- torchrec's train pipeline (CUDA; core/train_pipeline.py) ---------------------------------------------------
    def pipeline_problem(self) -> str | None:
        """Why this loop cannot train through torchrec's TrainPipelineSparseDist, or None when it can."""
        return pipeline_problem(self.model, self.config.gradient_accumulation_steps)

    def _wants_pipeline(self) -> bool:
        return wants_pipeline(self.use_train_pipeline, self.pipeline_problem, self.ctx.device)

    def _start_pipeline(self, batches: Iterator[Any]) -> PipelinedSteps:
        def forward(batch: Any) -> tuple[torch.Tensor, Any]:
            with self._autocast():
                loss, outputs = self.model(batch)
            self._account(batch, loss, outputs)
            return loss, outputs

        feed = PipelineFeed(self._epochs.position, lambda: next_batch(batches))
        return PipelinedSteps(self.model, self._update, forward, self.ctx.device, feed)

    def _pipelined_step(self) -> bool:
        """One optimizer step through the pipeline; False when the data has ended and nothing is left in flight."""
        assert self._pipelined is not None
        return self._pipelined.step()

    # --- reporting -------------------------------------------------------------------------------------------------------
    def _report(self, writer: MetricsWriter, progress: Any) -> dict[str, float]:
        """All-reduce the window's sums, raise on a non-finite loss, log a line and TensorBoard scalars."""
        if self._window.batches == 0:
            return {}
        totals = self._window.read(self.ctx)
        self.examples += totals.examples
        self._window.reset(first_step=self.step + 1)
        totals.check_finite(self.step, str(self._last_checkpoint.path) if self._last_checkpoint else "none written yet")
        learning_rates = self.dense_optimizer.learning_rates
        metrics = totals.metrics(self.task_names, learning_rates, grad_norm=self.config.clip_grad_norm is not None)
        writer.scalars(metrics, self.step)
        total = total_train_steps(self.config, self.steps_per_epoch)
        logger.info("%s", totals.line(self.task_names, learning_rates, self.step, total, self.epoch))
        if progress is not None:
            progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)
        return metrics

    def _run_evaluation(self, writer: MetricsWriter) -> dict[str, float]:
        assert self.evaluate is not None
        if self._pipelined is not None:
            self._pipelined.pause()  # evaluation calls the model outside the pipeline
        average_buffers(self.model, self.ctx)
        self.model.eval()
        start = time.perf_counter()
        try:
            # Evaluation must not move the training's random streams (a resumed run evaluates at other steps).
            with torch.random.fork_rng(devices=[]), torch.no_grad(), self._autocast():
                metrics = self.evaluate(self.step, self._last_batch)
        finally:
            self.model.train()
        try:
            writer.scalars(metrics, self.step)
            writer.flush()
        except Exception as exc:  # TensorBoard is a report: losing it must not stop training (metrics are logged)
            logger.error("evaluation at step %d: writing TensorBoard failed (%s: %s)", self.step,
                         type(exc).__name__, exc)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.count("/") <= 2)
        logger.info("evaluation at step %d (%.1fs): %s", self.step, time.perf_counter() - start, shown)
        return metrics

    def _select(self, metrics: dict[str, float], writer: MetricsWriter) -> bool:
        """After a periodic evaluation (collective): model selection's decisions; True to stop training."""
        if self.model_selection is None:
            return False
        return self.model_selection.select(self.step, metrics, writer, self._checkpoint_step)

    def _stop_if_signalled(self, requested: dict[str, int], writer: MetricsWriter, progress: Any) -> None:
        """After a step: if a stop signal reached any rank, checkpoint this step and raise TrainingStopped."""
        signum = signal_on_any_rank(requested, self.ctx, self._stop_group)
        if not signum:
            return
        self._report(writer, progress)
        self._checkpoint_step()
        stopped = TrainingStopped(signum, self.step, self._last_checkpoint.path if self._last_checkpoint else None)
        logger.warning("%s", stopped)
        raise stopped

    # --- the loop --------------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Resume or warm start, train to the end, checkpoint periodically and at the end."""
        resumed = self.restore()
        if self.model_selection is not None:
            self.model_selection.restore(self.step)
        cfg = self.config
        if self.model_selection is not None and self.model_selection.stopped_at(self.step):
            return TrainResult(self.step, self.epoch, self._last_checkpoint.path if self._last_checkpoint else None,
                               resumed.path if resumed else None)
        writer = MetricsWriter(self.save_dir / TENSORBOARD_DIR, enabled=self.ctx.is_main,
                               purge_step=self.step + 1 if resumed else None)
        result = TrainResult(self.step, self.epoch, None, resumed.path if resumed else None)
        data = self._epochs.batches()
        self.model.train()
        self._window.reset(first_step=self.step + 1)
        if self._wants_pipeline():
            self._pipelined = self._start_pipeline(data)
        try:
            bar = step_bar(self.ctx.is_main, total_train_steps(self.config, self.steps_per_epoch), self.step)
            with bar as progress, stop_signals() as requested:
                while cfg.num_train_steps is None or self.step < cfg.num_train_steps:
                    with self.compile_clock.measure(f"training step {self.step + 1}"):
                        stepped = self._pipelined_step() if self._pipelined is not None else self._train_step(data)
                    if not stepped:
                        break
                    self._stop_if_signalled(requested, writer, progress)
                    if progress is not None:
                        progress.update(1)
                    finished = cfg.num_train_steps is not None and self.step >= cfg.num_train_steps
                    checkpoint_due = self.step % cfg.checkpoint_every_n == 0
                    eval_due = self.evaluate is not None and cfg.eval_every_n and self.step % cfg.eval_every_n == 0
                    if self.step % cfg.train_log_every_n == 0 or checkpoint_due or eval_due or finished:
                        result.last_train_metrics = self._report(writer, progress) or result.last_train_metrics
                    if checkpoint_due or finished:
                        # The last step is saved before its evaluation: nothing evaluation does may cost the run.
                        self._save()
                    if eval_due:
                        result.last_eval_metrics = self._run_evaluation(writer)
                        if self._select(result.last_eval_metrics, writer):
                            break
                result.last_train_metrics = self._report(writer, progress) or result.last_train_metrics
                self._checkpoint_step()
                if self.evaluate is not None and cfg.eval_every_n and self.step % cfg.eval_every_n != 0:
                    result.last_eval_metrics = self._run_evaluation(writer)
                    self._select(result.last_eval_metrics, writer)
        finally:
            if self._pipelined is not None:
                self._pipelined.pipeline.detach()  # the model keeps its own forwards after training
            writer.close()
        result.step, result.epoch = self.step, self._data_position()[0]
        result.checkpoint = self._last_checkpoint.path if self._last_checkpoint else None
        logger.info("training finished at step %d (epoch %d); checkpoint %s", self.step, self.epoch,
                    result.checkpoint)
        return result
