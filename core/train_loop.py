"""The training loop: steps or epochs, gradient accumulation, clipping, bf16 autocast, logging to the console and
TensorBoard, periodic evaluation, and checkpoints with automatic resume. Project-agnostic: it needs a model whose
forward(batch) returns (loss, outputs) -- outputs["task_losses"] [T] when there are task names -- a DenseOptimizer,
optionally the sparse optimizer fused into backward, and resumable training data.

Between log steps the loop never waits for the device: losses accumulate in a tensor and are read (with one
all-reduce) only when a line is logged, a checkpoint is written or evaluation runs. A non-finite loss is therefore
noticed at the next of those points, always before a checkpoint could record it.

On CUDA, a torchrec DistributedModelParallel trains through torchrec's TrainPipelineSparseDist, which overlaps the
next batches' host-to-device copies and sparse all-to-alls with the current step (_PipelinedSteps); the loop's own
per-step work is unchanged. CPU training takes the plain path.
"""

from __future__ import annotations

import base64
import contextlib
import math
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.checkpoint import Checkpoint, read_best
from core.checkpoint_manager import CheckpointManager, load_model_weights
from core.compile import CompileClock
from core.distributed import DistributedContext, all_reduce_sum, average_buffers, data_parallel_module
from core.early_stopping import EarlyStopping, describe, selected_value
from core.log import get_logger
from core.storage import location
from core.tensorboard import MetricsWriter
from core.train_config import TrainingConfig

if TYPE_CHECKING:  # core.optimizers imports torchrec; the loop itself runs dense-only models without it
    from core.optimizers import DenseOptimizer

logger = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class ResumableData(Protocol):
    """Training batches with epochs and a position that can be saved and restored."""

    def __iter__(self) -> Iterator[Any]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class SparseOptimizer(Protocol):
    """The tables' optimizers (core/sparse_optimizers.py SparseOptimizers): state by parameter name, and a step for
    the tables that are not updated inside backward."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def step(self) -> None: ...


# evaluate(step, template_batch) -> {TensorBoard tag: value}; runs under no_grad with the model in eval mode.
# template_batch is a recent training batch, for ranks that must pad collective evaluation steps.
Evaluate = Callable[[int, Any], dict[str, float]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped without writing a checkpoint."""


class TrainingStopped(RuntimeError):
    """Training stopped on a signal (a cluster's preemption SIGTERM, or SIGINT) after every rank finished its step
    and a checkpoint of that step was written; a rerun with the same save_dir resumes from it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint
        # The shell's convention for a process ended by a signal: 128 + its number (SIGTERM 143, SIGINT 130).
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {self.signal_name} at step {step}; checkpoint {checkpoint}")


@contextlib.contextmanager
def stop_signals() -> Iterator[dict[str, int]]:
    """While active, SIGTERM and SIGINT only record themselves in the yielded dict ("signal": number), so training
    can stop at a step boundary; a second SIGINT interrupts at once. Main thread only (elsewhere: no handlers)."""
    requested: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and requested.get("signal") == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signum
        logger.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    step: int
    epoch: int
    checkpoint: Path | None
    resumed_from: Path | None = None
    last_train_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_metrics: dict[str, float] = field(default_factory=dict)


# --- random generator state as JSON ----------------------------------------------------------------------------------
def _encode(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _decode(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and python random states, JSON-serializable."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": _encode(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() returned."""
    torch.set_rng_state(_decode(state["torch"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_decode(s) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python random."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def _batch_size(batch: Any) -> int:
    size = getattr(batch, "batch_size", None)
    if isinstance(size, int):
        return size
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}: give it a batch_size attribute")


def _format_lr(lrs: dict[str, float]) -> str:
    values = set(lrs.values())
    if len(values) == 1:
        return f"{values.pop():.3g}"
    return " ".join(f"{name}={lr:.3g}" for name, lr in lrs.items())


def total_train_steps(config: TrainingConfig, steps_per_epoch: int | None) -> int | None:
    """The optimizer steps training will take: num_train_steps, else num_epochs x batches per epoch over the
    accumulation steps (None when neither is known)."""
    if config.num_train_steps is not None:
        return config.num_train_steps
    if steps_per_epoch is not None and config.num_epochs is not None:
        return -(-config.num_epochs * steps_per_epoch // config.gradient_accumulation_steps)
    return None


class _PipelineFeed:
    """The loop's batches as torchrec's pipeline pulls them: up to two ahead of the batch being trained. It notes the
    data position (epoch, data state) before each batch it hands out, so a checkpoint records the first batch not
    yet trained on, as the unpipelined loop does; batches given back (when evaluation pauses the pipeline) are
    handed out again first, in order."""

    def __init__(self, loop: TrainLoop, batches: Iterator[Any]) -> None:
        self._loop = loop
        self._batches = batches
        self._given_back: deque[Any] = deque()
        self.positions: deque[tuple[int, dict]] = deque()  # one per batch handed out and not trained on yet

    def __iter__(self) -> _PipelineFeed:
        return self

    def __next__(self) -> Any:
        if self._given_back:
            return self._given_back.popleft()
        position = (self._loop.epoch, self._loop.train_data.state_dict())
        batch = self._loop._next_batch(self._batches)
        if batch is None:
            raise StopIteration
        self.positions.append(position)
        return batch

    def give_back(self, batches: list[Any]) -> None:
        """Batches the pipeline held (older than any given back before and not handed out again yet)."""
        self._given_back.extendleft(reversed(batches))


class _StepAfterBackward:
    """What torchrec's pipeline calls its optimizer: zero_grad before each forward (a no-op: the loop's update leaves
    the gradients zeroed) and step after backward (the loop's whole update: clipping, dense and row-sparse steps)."""

    def __init__(self, update: Callable[[], None]) -> None:
        self._update = update

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        self._update()


@dataclass
class _PipelinedSteps:
    """Training through torchrec's TrainPipelineSparseDist (CUDA, a DistributedModelParallel, no accumulation):
    batch i+1's sparse input all-to-all and batch i+2's host-to-device copy run on side streams while batch i
    trains. The loop keeps its own per-step work: the forward runs under the loop's autocast and adds to its
    reporting window, the pipeline's optimizer is the loop's update, and checkpoints, stop signals and logging
    happen between steps as without the pipeline. Evaluation pauses the pipeline (TrainLoop._pause_pipeline)."""

    pipeline: Any
    feed: _PipelineFeed


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
        self.step = 0
        self.epoch = 0
        self.examples = 0  # global examples trained on
        self._resumed_data = False
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
        # True insists (an error says why it cannot), False never; see _PipelinedSteps.
        self.use_train_pipeline = use_train_pipeline
        self._pipelined: _PipelinedSteps | None = None
        # Logs the training steps during which torch.compile built graphs, with their time.
        self.compile_clock = CompileClock()
        self.early_stopping = (EarlyStopping(config.early_stopping)
                               if config.early_stopping is not None and evaluate is not None else None)
        self._reset_window()

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
        self.epoch = int(info["epoch"])
        self.examples = int(info.get("examples", 0))
        if info.get("seed") != self.config.seed:
            logger.warning("resuming a run started with seed %s under seed %s", info.get("seed"), self.config.seed)
        if rank_info is None:
            logger.warning(
                "%s was written by a different number of ranks: the data restarts at the beginning of epoch %d "
                "and random generators are not restored", checkpoint.path, self.epoch
            )
        else:
            self.train_data.load_state_dict(rank_info["data"])
            set_rng_state(rank_info["rng"])
            self._resumed_data = True
        self._last_checkpoint = checkpoint
        logger.info("resumed from %s (step %d, epoch %d)", checkpoint.path, self.step, self.epoch)
        return checkpoint

    # --- data ------------------------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Any]:
        resumed = self._resumed_data
        while self.config.num_epochs is None or self.epoch < self.config.num_epochs:
            if not resumed:
                self.train_data.set_epoch(self.epoch)
            count = 0
            for batch in self.train_data:
                count += 1
                yield batch
            if count == 0 and not resumed:
                raise RuntimeError(f"the training data yields no batches in epoch {self.epoch} on rank {self.ctx.rank}")
            resumed = False
            self.epoch += 1

    @staticmethod
    def _next_batch(data: Iterator[Any]) -> Any:
        # Starting a DataLoader iterator draws from the global torch generator; keeping data loading out of the
        # training's random stream makes dropout masks independent of where a run was resumed.
        state = torch.get_rng_state()
        try:
            return next(data, None)
        finally:
            torch.set_rng_state(state)

    def _to_device(self, batch: Any) -> Any:
        if self.ctx.device.type == "cpu" or not hasattr(batch, "to"):
            return batch
        return batch.to(self.ctx.device, non_blocking=True)

    def _data_position(self) -> tuple[int, dict]:
        """(epoch, data state) of the first batch not trained on yet: what a checkpoint records. The pipeline pulls
        batches ahead of training; their positions were noted when they were pulled."""
        if self._pipelined is not None and self._pipelined.feed.positions:
            return self._pipelined.feed.positions[0]
        return self.epoch, self.train_data.state_dict()

    # --- one optimizer step ------------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self._autocast_dtype)

    def _reset_window(self) -> None:
        # [loss sum, non-finite count, per-task loss sums]; read only at report time.
        self._window = torch.zeros(2 + len(self.task_names), device=self.ctx.device)
        self._window_micro = 0
        self._window_examples = 0
        self._window_start = time.perf_counter()
        self._window_first_step = self.step + 1
        self._grad_norm: torch.Tensor | None = None

    def _train_step(self, data: Iterator[Any]) -> bool:
        """Forward/backward over up to gradient_accumulation_steps batches, then one update; False if the data
        ended before the first batch."""
        accumulation = self.config.gradient_accumulation_steps
        micro = 0
        while micro < accumulation:
            batch = self._next_batch(data)
            if batch is None:
                break
            batch = self._to_device(batch)
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
        loss = loss.detach().float()
        self._window[0] += loss
        self._window[1] += (~torch.isfinite(loss)).float()
        if self.task_names:
            self._window[2:] += outputs["task_losses"].detach().float()
        self._window_micro += 1
        self._window_examples += _batch_size(batch)
        self._last_batch = batch

    def _update(self) -> None:
        """The optimizer step after backward: clipping, the dense optimizer, the row-sparse tables; step += 1."""
        self.dense_optimizer.set_step(self.step + 1)
        if self.config.clip_grad_norm is not None:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self._dense_params, self.config.clip_grad_norm)
        self.dense_optimizer.step()
        self.dense_optimizer.zero_grad()
        if self.sparse_optimizer is not None:
            # Tables outside the fused backward (data-parallel ones) are updated here, once per optimizer step.
            self.sparse_optimizer.step()
        self.step += 1

    # --- torchrec's train pipeline (CUDA) ----------------------------------------------------------------------------
    def pipeline_problem(self) -> str | None:
        """Why this loop cannot train through torchrec's TrainPipelineSparseDist, or None when it can."""
        dmp = sys.modules.get("torchrec.distributed.model_parallel")  # loaded whenever a model was sharded
        if dmp is None or not isinstance(self.model, dmp.DistributedModelParallel):
            return "the model is not a torchrec DistributedModelParallel"
        if self.config.gradient_accumulation_steps > 1:
            # The pipeline runs the optimizer after every batch's backward and cannot hold DDP's gradient sync.
            return "gradient_accumulation_steps > 1"
        # A model may say why torch.fx cannot trace it for the pipeline (a `train_pipeline_problem()` method).
        for module in self.model.modules():
            says = getattr(module, "train_pipeline_problem", None)
            if callable(says) and says() is not None:
                return says()
        return None

    def _wants_pipeline(self) -> bool:
        if self.use_train_pipeline is False:
            return False
        problem = self.pipeline_problem()
        if problem is not None:
            if self.use_train_pipeline:
                raise ValueError(f"torchrec's train pipeline was asked for, but {problem}")
            if self.ctx.device.type == "cuda":
                logger.info("training without torchrec's train pipeline: %s", problem)
            return False
        return bool(self.use_train_pipeline) or self.ctx.device.type == "cuda"

    def _start_pipeline(self, batches: Iterator[Any]) -> _PipelinedSteps:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        def forward(batch: Any) -> tuple[torch.Tensor, Any]:
            with self._autocast():
                loss, outputs = self.model(batch)
            self._account(batch, loss, outputs)
            return loss, outputs

        pipeline = TrainPipelineSparseDist(self.model, _StepAfterBackward(self._update), self.ctx.device,
                                           execute_all_batches=True, custom_model_fwd=forward,
                                           # Lets an id transform between batch and tables run pipelined too.
                                           pipeline_postproc=True)
        logger.info("training through torchrec's TrainPipelineSparseDist: host-to-device copies and sparse "
                    "all-to-alls of the next batches overlap each step")
        return _PipelinedSteps(pipeline, _PipelineFeed(self, batches))

    def _pipelined_step(self) -> bool:
        """One optimizer step through the pipeline; False when the data has ended and nothing is left in flight."""
        assert self._pipelined is not None
        try:
            self._pipelined.pipeline.progress(self._pipelined.feed)
        except StopIteration:
            return False
        self._pipelined.feed.positions.popleft()
        return True

    def _pause_pipeline(self) -> None:
        """Before the model is called outside the pipeline (evaluation): give it back its own forwards; the batches
        in flight are fed again, from their host-to-device copy on, at the next step."""
        if self._pipelined is None:
            return
        pipeline = self._pipelined.pipeline
        pipeline.detach()
        self._pipelined.feed.give_back(list(pipeline.batches))
        pipeline.reset()
        pipeline.attach()  # nothing in flight: the model's forwards are rewritten again at the next step

    # --- reporting -------------------------------------------------------------------------------------------------------
    def _report(self, writer: MetricsWriter, progress: Any) -> dict[str, float]:
        """All-reduce the window's sums, raise on a non-finite loss, log a line and TensorBoard scalars."""
        if self._window_micro == 0:
            return {}
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        world = self.ctx.world_size
        per_rank = torch.zeros(world, device=self.ctx.device)
        per_rank[self.ctx.rank] = self._window_examples / elapsed
        grad_norm = self._grad_norm.reshape(1).float() if self._grad_norm is not None else self._window.new_zeros(1)
        counts = self._window.new_tensor([float(self._window_micro), float(self._window_examples)])
        values = all_reduce_sum(torch.cat([self._window, per_rank, grad_norm, counts]), self.ctx).tolist()
        n = 2 + len(self.task_names)
        window, rates, grad_norm_sum, (micro_total, examples_total) = (
            values[:n], values[n : n + world], values[n + world], values[n + world + 1 :]
        )
        first = self._window_first_step
        self.examples += int(examples_total)
        self._reset_window()
        if window[1] > 0:
            last_good = self._last_checkpoint.path if self._last_checkpoint else "none written yet"
            raise NonFiniteLossError(
                f"non-finite training loss in {int(window[1])} batch(es) between steps {first} and {self.step}; "
                f"training stopped without saving. Last good checkpoint: {last_good}"
            )
        metrics = {"train/loss": window[0] / micro_total}
        for i, task in enumerate(self.task_names):
            metrics[f"train/loss/{task}"] = window[2 + i] / micro_total
        for name, lr in self.dense_optimizer.learning_rates.items():
            metrics[f"train/learning_rate/{name}"] = lr
        metrics["train/examples_per_second"] = sum(rates)
        for r, rate in enumerate(rates):
            metrics[f"train/examples_per_second/rank_{r}"] = rate
        if self._grad_norm is not None or self.config.clip_grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm_sum / world
        writer.scalars(metrics, self.step)
        total = self._total_steps()
        tasks = " ".join(f"{t}={metrics[f'train/loss/{t}']:.4f}" for t in self.task_names)
        logger.info(
            "step %d%s epoch %d | loss %.4f%s | lr %s | %.0f ex/s (%.0f/rank)",
            self.step, f"/{total}" if total else "", self.epoch, metrics["train/loss"],
            f" [{tasks}]" if tasks else "", _format_lr(self.dense_optimizer.learning_rates),
            metrics["train/examples_per_second"], metrics["train/examples_per_second"] / world,
        )
        if progress is not None:
            progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)
        return metrics

    def _run_evaluation(self, writer: MetricsWriter) -> dict[str, float]:
        assert self.evaluate is not None
        self._pause_pipeline()
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

    # --- model selection -------------------------------------------------------------------------------------------
    def _restore_selection(self) -> None:
        """Early stopping's history as of the step training resumes from (none for a fresh run)."""
        if self.early_stopping is None:
            return
        record = read_best(self.checkpoints.directory)
        if record is not None:
            self.early_stopping.load_state_dict(record)
        self.early_stopping.rewind(self.step)

    def _select(self, metrics: dict[str, float], writer: MetricsWriter) -> bool:
        """After a periodic evaluation (collective): mark and keep the best checkpoint; True to stop training."""
        stopping = self.early_stopping
        if stopping is None:
            return False
        value = selected_value(stopping.config, self.task_names, metrics) if self.ctx.is_main else None
        if self.ctx.world_size > 1:  # rank 0 holds the metrics; every rank must take the same decisions
            holder = torch.tensor([math.nan if value is None else value], dtype=torch.float64)
            dist.broadcast(holder, src=0, group=self._stop_group)
            value = None if math.isnan(holder.item()) else holder.item()
        if value is None:
            logger.warning("early stopping: this evaluation has no %s; nothing decided", describe(stopping.config))
            return False
        improved, stop = stopping.update(self.step, value)
        if (improved or stop) and (self._last_checkpoint is None or self._last_checkpoint.step != self.step):
            self._save()  # the best (or the last) step must exist as a checkpoint
        self.checkpoints.mark_best(stopping.state_dict())
        best_step, best_value = stopping.best()
        writer.scalars({"early_stopping/value": value, "early_stopping/best_value": best_value,
                        "early_stopping/best_step": float(best_step)}, self.step)
        logger.info("early stopping: %s = %.6g at step %d; best %.6g at step %d (%d evaluation(s) without "
                    "improvement)", describe(stopping.config), value, self.step, best_value, best_step,
                    stopping.evaluations_without_improvement())
        if stop:
            writer.scalars({"early_stopping/stopped_at": float(self.step)}, self.step)
            logger.warning("early stopping at step %d: %s did not improve by more than %g in %d evaluations; the "
                           "best checkpoint is step %d (checkpoints/best)", self.step, describe(stopping.config),
                           stopping.config.min_delta, stopping.config.patience, best_step)
        return stop

    def _total_steps(self) -> int | None:
        return total_train_steps(self.config, self.steps_per_epoch)

    def _progress(self) -> Any:
        if not self.ctx.is_main or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=self._total_steps(), initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                    leave=False)

    def _stop_if_signalled(self, requested: dict[str, int], writer: MetricsWriter, progress: Any) -> None:
        """After a step: if a stop signal reached any rank, checkpoint this step and raise TrainingStopped."""
        signum = requested.get("signal", 0)
        if self.ctx.world_size > 1:
            # Every rank stops at the same step, whichever got the signal (a launcher forwards it to all of them).
            flag = torch.tensor([float(signum)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
            signum = int(flag.item())
        if not signum:
            return
        self._report(writer, progress)
        if self._last_checkpoint is None or self._last_checkpoint.step != self.step:
            self._save()
        stopped = TrainingStopped(signum, self.step, self._last_checkpoint.path if self._last_checkpoint else None)
        logger.warning("%s", stopped)
        raise stopped

    # --- the loop --------------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Resume or warm start, train to the end, checkpoint periodically and at the end."""
        resumed = self.restore()
        self._restore_selection()
        cfg = self.config
        if self.early_stopping is not None and self.early_stopping.stopped_at == self.step:
            logger.info("this run stopped early at step %d (%s); nothing to train: its best checkpoint is %s",
                        self.step, describe(self.early_stopping.config), self.early_stopping.best())
            return TrainResult(self.step, self.epoch, self._last_checkpoint.path if self._last_checkpoint else None,
                               resumed.path if resumed else None)
        writer = MetricsWriter(self.save_dir / TENSORBOARD_DIR, enabled=self.ctx.is_main,
                               purge_step=self.step + 1 if resumed else None)
        result = TrainResult(self.step, self.epoch, None, resumed.path if resumed else None)
        progress = self._progress()
        redirect = contextlib.nullcontext()
        if progress is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            redirect = logging_redirect_tqdm()
        data = self._batches()
        self.model.train()
        self._reset_window()
        if self._wants_pipeline():
            self._pipelined = self._start_pipeline(data)
        try:
            with redirect, stop_signals() as requested:
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
                if self._last_checkpoint is None or self._last_checkpoint.step != self.step:
                    self._save()
                if self.evaluate is not None and cfg.eval_every_n and self.step % cfg.eval_every_n != 0:
                    result.last_eval_metrics = self._run_evaluation(writer)
                    self._select(result.last_eval_metrics, writer)
        finally:
            if self._pipelined is not None:
                self._pipelined.pipeline.detach()  # the model keeps its own forwards after training
            if progress is not None:
                progress.refresh()  # the final count, even when the last update fell inside tqdm's mininterval
                progress.close()
            writer.close()
        result.step, result.epoch = self.step, self._data_position()[0]
        result.checkpoint = self._last_checkpoint.path if self._last_checkpoint else None
        logger.info("training finished at step %d (epoch %d); checkpoint %s", self.step, self.epoch,
                    result.checkpoint)
        return result
