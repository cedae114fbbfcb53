"""The figures of one config, phase by phase (what `recap benchmark` measures; see throughput.py for the run):

  - FLOPs and matmul shapes of one training step (torch.utils.flop_counter, forward+backward);
  - training: the training loop's own step (TrainLoop: forward, loss, backward, gradient clipping, the dense Adam and
    the sparse optimizer fused into backward, on the DistributedModelParallel model) on batches already in memory;
  - evaluation: the evaluator's per-batch work (eval-mode forward without gradients, metrics accumulation);
  - loader: rows/s of RecapDataLoader over a temporary parquet file in the config's schema (schema_data.py), and
    over the same data in the prepared layout (`recap data prepare`);
  - pipeline: the same training step fed by that loader.
Each phase that processes rows counts them on the progress report it is given (core.progress), after each timed
window: outside the timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.batch import RecapBatch
from core import perf
from core.distributed import DistributedContext
from core.metrics_accumulator import MetricsAccumulator
from core.progress import Progress
from core.train_loop import TrainLoop
from projects.home.recap.benchmarks.schema_data import row_bytes, write_schema_parquet
from projects.home.recap.benchmarks.timing import calls_per_window, counter, matmul_shapes, rates, timing_json
from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.preparing import prepare
from projects.home.recap.inference import inference_mode, run_model
from projects.home.recap.model.multi_task import DenseRankingModel
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig
from projects.home.recap.train import build_sparse_optimizer, build_training

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT_CONFIGS = (("demo", CONFIG_DIR / "demo.yaml"), ("recap_scale", CONFIG_DIR / "recap_scale.yaml"))
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """What to measure and for how long (seconds are measuring budgets per figure, not hard limits)."""

    configs: tuple[tuple[str, Path], ...] = DEFAULT_CONFIGS
    overrides: tuple[str, ...] = ()
    batch_size: int | None = None
    precisions: tuple[str, ...] = PRECISIONS
    peak_seconds: float = 0.3  # per matmul shape and backend
    # The smallest matmul shapes, holding this share of the FLOPs together, are not measured for the peak.
    peak_flops_share: float = 0.01
    # Training windows of about a second: long enough to be a fair sample, short enough to fall between the
    # bursts of other work on a shared machine.
    window_seconds: float = 1.0
    train_seconds: float = 6.0
    eval_seconds: float = 3.0
    loader_rows: int = 50_000
    loader_max_mb: float = 256.0  # fewer rows for wide schemas, to bound the temporary file
    pipeline_seconds: float = 8.0
    torchrun_nproc: int = 0  # 0: skip the multi-rank figure
    torchrun_steps: int = 6
    seed: int = 0
    # Also time training compiled and with the task towers one by one (compile.py).
    compile: bool = True
    # The compiled variants' torch.compile backend: inductor (what users compile with), or aot_eager (tracing only,
    # no code generation: a quick check that every variant runs).
    compile_backend: str = "inductor"
    # Also time a bare plain-PyTorch loop of the same dense shape in turns with our training step (bare_peer.py).
    bare_peer: bool = True

    @classmethod
    def quick(cls, **changes: Any) -> BenchmarkSettings:
        """Tiny budgets: every code path runs in seconds (figures are not meaningful)."""
        base = cls(peak_seconds=0.02, window_seconds=0.02, train_seconds=0.2, eval_seconds=0.1, loader_rows=2_000,
                   pipeline_seconds=0.2, torchrun_steps=2, compile=False)
        return dataclasses.replace(base, **changes)

    def config_overrides(self) -> list[str]:
        """The overrides every measured config is loaded with (--set, then the batch size)."""
        overrides = list(self.overrides)
        if self.batch_size is not None:
            overrides.append(f"data.batch_size={self.batch_size}")
        return overrides


class InMemoryData:
    """The ResumableData the training loop is built with; the benchmark feeds its step directly."""

    def __init__(self, batches: list[RecapBatch]):
        self.batches = batches

    def __iter__(self) -> Iterator[RecapBatch]:
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def cycle(batches: list[RecapBatch]) -> Iterator[RecapBatch]:
    """The batches over and over."""
    while True:
        yield from batches


def train_step_of(loop: TrainLoop) -> Callable[[Iterator[Any]], bool]:
    """The loop's one-update step (forward/backward over gradient_accumulation_steps batches, clip, optimizers)."""
    step = getattr(loop, "train_step", None) or loop._train_step
    return step


def dense_model(model: torch.nn.Module) -> DenseRankingModel:
    """The DenseRankingModel inside a (sharded) model."""
    return next(m for m in model.modules() if isinstance(m, DenseRankingModel))


def dense_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters outside the large embedding tables."""
    return sum(p.numel() for n, p in model.named_parameters() if "large_embeddings" not in n and p.requires_grad)


def read_batches(config: RecapConfig, tasks: list[str], count: int, rank: int = 0, world_size: int = 1
                 ) -> list[RecapBatch]:
    """The first `count` training batches of the config's training data on this rank, as training reads them."""
    loader = RecapDataLoader(config.data, config.data.train, tasks, "train", rank, world_size,
                             config.data.batch_size)
    batches: list[RecapBatch] = []
    data = iter(loader)
    for batch in data:
        batches.append(batch)
        if len(batches) == count:
            break
    data.close()  # stops the loader's workers, which would go on reading ahead
    if not batches:
        raise ValueError(f"no full training batch in {config.data.train.paths}")
    return batches


class ConfigBenchmark:
    """All figures of one config: built once (sharded model, dense optimizer), measured phase by phase."""

    def __init__(self, name: str, config: RecapConfig, settings: BenchmarkSettings, ctx: DistributedContext,
                 workdir: Path):
        self.name = name
        self.config = config
        self.settings = settings
        self.ctx = ctx
        self.workdir = workdir
        with perf.peak_rss_window() as mem:
            # The schedule's length only shapes learning rates, not speed: a cosine without final_num_steps gets one.
            self.model, self.dense_optimizer, self.tasks = build_training(config, ctx, total_steps=1_000_000)
        self.build_peak_rss = mem["peak_rss"]
        self.batch_size = config.data.batch_size
        self.eval_batch_size = config.data.eval_batch_size or config.data.batch_size
        g = torch.Generator().manual_seed(settings.seed)
        self.batches = [random_batch(config, self.batch_size, g) for _ in range(4)]
        self.eval_batches = [random_batch(config, self.eval_batch_size, g) for _ in range(4)]
        self.accumulation = config.training.gradient_accumulation_steps

    @property
    def examples_per_step(self) -> int:
        """Rows of one training update (the batch times the gradient accumulation steps)."""
        return self.batch_size * self.accumulation

    def loop(self, precision: str, data: Any) -> TrainLoop:
        """The training loop of the built model, in `precision`, reading `data`."""
        training = self.config.training.model_copy(
            update={"mixed_precision": precision, "save_dir": str(self.workdir / "run")}
        )
        return TrainLoop(self.model, self.dense_optimizer, data, training, self.ctx, task_names=self.tasks,
                         sparse_optimizer=build_sparse_optimizer(self.config, self.model))

    def in_memory_step(self, precision: str) -> Callable[[], object]:
        """One call: one update of the training loop's step on self.batches, in turn (the model in training mode)."""
        step = train_step_of(self.loop(precision, InMemoryData(self.batches)))
        data = cycle(self.batches)
        self.model.train()
        return lambda: step(data)

    def _forward_backward(self, precision: str) -> Callable[[], None]:
        batch = self.batches[0]

        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss, _ = self.model(batch)
            loss.backward()
            self.dense_optimizer.zero_grad()

        return run

    def flops_and_shapes(self, precision: str) -> tuple[int, dict[perf.MatmulShape, int]]:
        """FLOPs of one forward+backward of one batch, and the FLOPs spent in each matmul shape."""
        self.model.train()
        fn = self._forward_backward(precision)
        return perf.count_flops(fn), matmul_shapes(fn)

    def train(self, precision: str, flops_per_batch: int, progress: Progress | None = None) -> dict[str, Any]:
        """The training loop's step on in-memory batches."""
        step = self.in_memory_step(precision)
        examples = self.examples_per_step
        with perf.peak_rss_window() as mem:
            # The first step allocates the optimizer's and the autograd's buffers.
            calls = calls_per_window(step, self.settings.window_seconds)
            timing = perf.time_call(step, calls=calls, warmup=0, min_repeats=3,
                                    budget_seconds=self.settings.train_seconds, on_window=counter(progress, examples))
        return {
            **rates(examples, timing),
            "gflops_per_second": flops_per_batch * self.accumulation / timing.best / 1e9,
            "step": timing_json(timing),
            "peak_rss_bytes": mem["peak_rss"],
        }

    def evaluate(self, precision: str, progress: Progress | None = None) -> dict[str, Any]:
        """The evaluator's per-batch work: eval-mode forward without gradients, then metrics accumulation."""
        accumulator = MetricsAccumulator()

        def window() -> None:
            accumulator.reset()
            for batch, outputs in run_model(self.model, self.eval_batches, self.ctx):
                accumulator.update(outputs["calibrated_probabilities"], batch.labels, batch.weights,
                                   stratifiers=outputs["stratifiers"])

        rows = self.eval_batch_size * len(self.eval_batches)
        with perf.peak_rss_window() as mem, inference_mode(self.model, self.ctx.device, precision == "bf16"):
            timing = perf.time_call(window, warmup=1, min_repeats=3, budget_seconds=self.settings.eval_seconds,
                                    on_window=counter(progress, rows))
        return {**rates(rows, timing), "window": timing_json(timing), "peak_rss_bytes": mem["peak_rss"]}

    def write_data(self) -> tuple[RecapConfig, int]:
        """A temporary parquet file in the config's schema; the config pointed at it."""
        rows = self.settings.loader_rows
        cap = int(self.settings.loader_max_mb * 2**20 / row_bytes(self.config))
        rows = max(2 * self.examples_per_step, min(rows, cap))
        path = write_schema_parquet(self.config, self.workdir / "data" / "train" / "part-00000.parquet", rows,
                                    self.settings.seed)
        data = self.config.data.model_copy(update={"train": DatasetConfig(paths=[str(path.parent)])})
        return self.config.model_copy(update={"data": data}), rows

    def prepare_data(self, config: RecapConfig) -> RecapConfig:
        """The temporary data in the prepared layout (`recap data prepare`); the config pointed at it."""
        target = self.workdir / "data" / "prepared"
        prepare(config.data, config.data.train.paths[0], str(target))
        data = config.data.model_copy(update={"train": DatasetConfig(paths=[str(target)])})
        return config.model_copy(update={"data": data})

    def loader(self, config: RecapConfig, progress: Progress | None = None) -> dict[str, Any]:
        """Rows/s of the training loader (the config's num_workers), best of a few epochs after the first."""
        loader = RecapDataLoader(config.data, config.data.train, self.tasks, "train", self.ctx.rank,
                                 self.ctx.world_size, self.batch_size)
        epochs: list[float] = []
        worker_peak = 0
        rows_per_epoch = 0
        start = time.perf_counter()
        with perf.peak_rss_window() as mem:
            for epoch in range(6):
                loader.set_epoch(epoch)
                t0 = time.perf_counter()
                rows = 0
                for batch in loader:
                    rows += batch.batch_size
                    worker_peak = max([worker_peak] + [perf.peak_rss_bytes(p) for p in perf.child_pids()])
                epochs.append((time.perf_counter() - t0) / max(rows, 1))
                if progress is not None:
                    progress.update(rows)
                rows_per_epoch = rows
                if epoch >= 2 and time.perf_counter() - start > self.settings.pipeline_seconds:
                    break
        # The first epoch includes starting the worker processes; later epochs read from the page cache.
        steady = epochs[1:] or epochs
        return {
            "rows_per_second": 1.0 / min(steady),
            "median_rows_per_second": 1.0 / float(np.median(steady)),
            "first_epoch_rows_per_second": 1.0 / epochs[0],
            "rows_per_epoch": rows_per_epoch,
            "epochs": len(epochs),
            "num_workers": loader.num_workers,
            "peak_rss_bytes": mem["peak_rss"],
            "worker_peak_rss_bytes": worker_peak,
        }

    @contextlib.contextmanager
    def pipeline_step(self, config: RecapConfig, precision: str) -> Iterator[tuple[Callable[[], object], int]]:
        """(one update of the training step fed by the loader, the updates that span one shuffle-buffer fill): the
        loader's work comes in bursts, one per fill (or epoch), so a timed window of that many updates pays for one.
        The loader's workers stop on exit."""
        loader = RecapDataLoader(config.data, config.data.train, self.tasks, "train", self.ctx.rank,
                                 self.ctx.world_size, self.batch_size, repeat=True)
        step = train_step_of(self.loop(precision, loader))
        data = iter(loader)
        self.model.train()
        fill_batches = -(-config.data.shuffle_buffer_rows // self.examples_per_step)
        try:
            yield (lambda: step(data)), max(1, min(len(loader) // self.accumulation, fill_batches))
        finally:
            data.close()  # stops the loader's workers

    def pipeline(self, config: RecapConfig, precision: str, progress: Progress | None = None) -> dict[str, Any]:
        """The training step fed by the loader (workers running, batches arriving as in training)."""
        with self.pipeline_step(config, precision) as (step, calls), perf.peak_rss_window() as mem:
            timing = perf.time_call(step, calls=calls, warmup=2, min_repeats=2,
                                    budget_seconds=self.settings.pipeline_seconds,
                                    on_window=counter(progress, self.examples_per_step))
        return {**rates(self.examples_per_step, timing), "step": timing_json(timing), "peak_rss_bytes": mem["peak_rss"]}
