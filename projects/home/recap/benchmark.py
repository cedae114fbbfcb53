"""`recap benchmark`: the recap ranker's throughput on this machine, measured against the machine's own matmul peak.

For each config (the demo and the recap-scale model by default), in one process:
  - matmul peak: the best GFLOP/s the machine reaches on the model's own matmul shapes (recorded from one training
    step) in fp32 and bf16, through PyTorch's matmul and through oneDNN;
  - training: the training loop's own step (TrainLoop: forward, loss, backward, gradient clipping, the dense Adam
    and the sparse optimizer fused into backward, on the DistributedModelParallel model) on batches already in
    memory, in fp32 and under bf16 autocast: examples/s, achieved GFLOP/s (forward+backward FLOPs counted by
    torch.utils.flop_counter) and MFU = achieved / peak;
  - evaluation: the evaluator's per-batch work (eval-mode forward without gradients, metrics accumulation);
  - loader: rows/s of RecapDataLoader over a temporary parquet file with the config's schema, and over the same
    data in the prepared layout (`recap data prepare`);
  - pipeline: the same training step fed by that loader, against the in-memory step;
  - peak resident memory of the process in each phase and of the loader's worker;
  - optionally the same training step on 2 ranks under torchrun against 1 rank.
Timings keep the best of several short windows (a shared machine only ever slows a window down); the medians and
the load average are reported alongside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common.batch import RecapBatch
from core import perf
from core.distributed import DistributedContext, init_distributed
from core.log import get_logger
from core.metrics_accumulator import MetricsAccumulator
from core.train_loop import TrainLoop
from projects.home.recap.benchmark_compile import compile_figures, format_compile_table
from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.data.preparing import prepare
from projects.home.recap.inference import inference_mode, run_model
from projects.home.recap.model.dense import DenseRankingModel
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig, load_recap_config
from projects.home.recap.train import build_sparse_optimizer, build_training

logger = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_CONFIGS = (("demo", CONFIG_DIR / "demo.yaml"), ("recap_scale", CONFIG_DIR / "recap_scale.yaml"))
PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
    # Also time training compiled and with the task towers one by one (benchmark_compile.py).
    compile: bool = True

    @classmethod
    def quick(cls, **changes: Any) -> BenchmarkSettings:
        """Tiny budgets: every code path runs in seconds (figures are not meaningful)."""
        base = cls(peak_seconds=0.02, window_seconds=0.02, train_seconds=0.2, eval_seconds=0.1, loader_rows=2_000, pipeline_seconds=0.2,
                   torchrun_steps=2, compile=False)
        return dataclasses.replace(base, **changes)


# --- helpers ---------------------------------------------------------------------------------------------------------
class _InMemoryData:
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


def _cycle(batches: list[RecapBatch]) -> Iterator[RecapBatch]:
    while True:
        yield from batches


def _train_step_of(loop: TrainLoop) -> Callable[[Iterator[Any]], bool]:
    """The loop's one-update step (forward/backward over gradient_accumulation_steps batches, clip, optimizers)."""
    step = getattr(loop, "train_step", None) or loop._train_step
    return step


def _timing_json(timing: perf.Timing) -> dict[str, float]:
    return {"best_seconds": timing.best, "median_seconds": timing.median, "windows": timing.repeats,
            "calls_per_window": timing.calls}


def _input_features(model: torch.nn.Module) -> int:
    dense = next(m for m in model.modules() if isinstance(m, DenseRankingModel))
    return dense.input_width


def _dense_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "large_embeddings" not in n and p.requires_grad)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    return []


def machine_info() -> dict[str, Any]:
    """What the figures came from: CPU, cores, threads, library versions, load."""
    return {
        "cpu": _cpu_name(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "onednn_linear": "onednn" in perf.BACKENDS,
        "load_average": list(perf.load_average()),
    }


# --- temporary parquet data in a config's schema ----------------------------------------------------------------------
def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def write_schema_parquet(config: RecapConfig, path: Path, rows: int, seed: int = 0, row_group_rows: int = 8192) -> Path:
    """A parquet file with every column the config reads (random values of the right types and widths)."""
    rng = np.random.default_rng(seed)
    f = config.data.features
    columns: dict[str, pa.Array] = {}
    for spec in f.continuous:
        values = np.exp(rng.standard_normal((rows, spec.width), dtype=np.float32) * 2)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for spec in f.binary:
        values = (rng.random((rows, spec.width), dtype=np.float32) < 0.3).astype(np.float32)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for spec in f.discrete:
        values = rng.integers(0, 40, (rows, spec.width), dtype=np.int64)
        columns[spec.name] = _fixed_list(values) if spec.length else pa.array(values[:, 0])
    for name in f.sparse:
        counts = rng.integers(0, 4, rows)
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        ids = rng.integers(-(1 << 40), 1 << 40, int(offsets[-1]), dtype=np.int64)
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    for emb in f.embeddings:
        columns[emb.name] = _fixed_list(rng.standard_normal((rows, emb.dim), dtype=np.float32))
    for name in f.ids:
        columns[name] = pa.array(np.arange(rows, dtype=np.int64))
    for group in f.sequences.values():
        # Full histories: every row holds max_length items (the loader's worst case).
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * group.max_length)
        n = rows * group.max_length
        for spec in group.ids:
            columns[spec.name] = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 1 << 40, n)))
            if spec.candidate and spec.candidate not in columns:
                columns[spec.candidate] = pa.array(rng.integers(0, 1 << 40, rows))
        if group.actions:
            columns[group.actions] = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 4, n)))
        for name in group.continuous:
            ages = np.sort(rng.exponential(24.0, (rows, group.max_length)).astype(np.float32), axis=1)
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(ages.reshape(-1)))
    if f.weight:
        columns[f.weight] = pa.array(rng.random(rows, dtype=np.float32) + 0.5)
    for task in config.data.tasks.values():
        columns[task.label] = pa.array((rng.random(rows) < 0.1).astype(np.int8))
    table = pa.table(columns)
    floats = [n for n, t in zip(table.column_names, table.schema.types)
              if pa.types.is_floating(t) or (pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type))]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Random floats do not compress; the other columns get parquet's usual snappy.
    pq.write_table(table, path, row_group_size=row_group_rows,
                   compression={n: "none" if n in floats else "snappy" for n in table.column_names})
    return path


def _row_bytes(config: RecapConfig) -> int:
    f = config.data.features
    return 4 * (f.num_continuous + f.num_binary + sum(e.dim for e in f.embeddings)) + 8 * (f.num_discrete + 8)


# --- the phases ------------------------------------------------------------------------------------------------------
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

    def _loop(self, precision: str, data: Any) -> TrainLoop:
        training = self.config.training.model_copy(
            update={"mixed_precision": precision, "save_dir": str(self.workdir / "run")}
        )
        return TrainLoop(self.model, self.dense_optimizer, data, training, self.ctx, task_names=self.tasks,
                         sparse_optimizer=build_sparse_optimizer(self.config, self.model))

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
        flops = perf.count_flops(fn)
        recorded = perf.record_matmul_shapes(fn)
        shapes: dict[perf.MatmulShape, int] = {}
        for (shape, _), f in recorded.items():
            shapes[shape] = shapes.get(shape, 0) + f
        return flops, shapes

    def train(self, precision: str, flops_per_batch: int) -> dict[str, Any]:
        """The training loop's step on in-memory batches."""
        loop = self._loop(precision, _InMemoryData(self.batches))
        data = _cycle(self.batches)
        step = _train_step_of(loop)
        self.model.train()
        with perf.peak_rss_window() as mem:
            step(data)  # the first step allocates the optimizer's and the autograd's buffers
            t0 = time.perf_counter()
            step(data)
            calls = max(1, round(self.settings.window_seconds / max(time.perf_counter() - t0, 1e-6)))
            timing = perf.time_call(lambda: step(data), calls=calls, warmup=0, min_repeats=3,
                                    budget_seconds=self.settings.train_seconds)
        examples = self.batch_size * self.accumulation
        return {
            "examples_per_second": examples / timing.best,
            "median_examples_per_second": examples / timing.median,
            "gflops_per_second": flops_per_batch * self.accumulation / timing.best / 1e9,
            "step": _timing_json(timing),
            "peak_rss_bytes": mem["peak_rss"],
        }

    def evaluate(self, precision: str) -> dict[str, Any]:
        """The evaluator's per-batch work: eval-mode forward without gradients, then metrics accumulation."""
        accumulator = MetricsAccumulator()

        def window() -> None:
            accumulator.reset()
            for batch, outputs in run_model(self.model, self.eval_batches, self.ctx):
                accumulator.update(outputs["calibrated_probabilities"], batch.labels, batch.weights,
                                   stratifiers=outputs["stratifiers"])

        with perf.peak_rss_window() as mem, inference_mode(self.model, self.ctx.device, precision == "bf16"):
            timing = perf.time_call(window, warmup=1, min_repeats=3, budget_seconds=self.settings.eval_seconds)
        rows = self.eval_batch_size * len(self.eval_batches)
        return {
            "examples_per_second": rows / timing.best,
            "median_examples_per_second": rows / timing.median,
            "window": _timing_json(timing),
            "peak_rss_bytes": mem["peak_rss"],
        }

    def write_data(self) -> tuple[RecapConfig, int]:
        """A temporary parquet file in the config's schema; the config pointed at it."""
        rows = self.settings.loader_rows
        cap = int(self.settings.loader_max_mb * 2**20 / _row_bytes(self.config))
        rows = max(2 * self.batch_size * self.accumulation, min(rows, cap))
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

    def loader(self, config: RecapConfig) -> dict[str, Any]:
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

    def pipeline(self, config: RecapConfig, precision: str) -> dict[str, Any]:
        """The training step fed by the loader (workers running, batches arriving as in training)."""
        loader = RecapDataLoader(config.data, config.data.train, self.tasks, "train", self.ctx.rank,
                                 self.ctx.world_size, self.batch_size, repeat=True)
        loop = self._loop(precision, loader)
        step = _train_step_of(loop)
        data = iter(loader)
        self.model.train()
        # A window spans a whole shuffle-buffer fill (or epoch): the loader's work comes in bursts, one per fill,
        # and every window must pay for one.
        fill_batches = -(-config.data.shuffle_buffer_rows // (self.batch_size * self.accumulation))
        calls = max(1, min(len(loader) // self.accumulation, fill_batches))
        with perf.peak_rss_window() as mem:
            timing = perf.time_call(lambda: step(data), calls=calls, warmup=2, min_repeats=2,
                                    budget_seconds=self.settings.pipeline_seconds)
        data.close()  # stops the loader's workers
        examples = self.batch_size * self.accumulation
        return {
            "examples_per_second": examples / timing.best,
            "median_examples_per_second": examples / timing.median,
            "step": _timing_json(timing),
            "peak_rss_bytes": mem["peak_rss"],
        }


def _pick_training_precision(results: dict[str, Any]) -> str:
    """The precision training runs fastest in: the loader has to keep up with that one."""
    train = results["train"]
    return max(train, key=lambda p: train[p]["examples_per_second"])


class _Phases:
    """Logs each phase as it starts and keeps the seconds it took."""

    def __init__(self, name: str):
        self.name = name
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        logger.info("%s: %s", self.name, phase)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = time.perf_counter() - start


def _peak_shapes(shapes: dict[perf.MatmulShape, int], share: float) -> dict[perf.MatmulShape, int]:
    """The shapes that together hold all but `share` of the matmul FLOPs (tiny products never set the peak)."""
    total = sum(shapes.values())
    kept: dict[perf.MatmulShape, int] = {}
    for shape, flops in sorted(shapes.items(), key=lambda item: -item[1]):
        if kept and sum(kept.values()) >= (1.0 - share) * total:
            break
        kept[shape] = flops
    return kept


def benchmark_config(name: str, config: RecapConfig, settings: BenchmarkSettings, ctx: DistributedContext,
                     workdir: Path) -> dict[str, Any]:
    """Every figure of one config (see the module docstring)."""
    phase = _Phases(name)
    with phase("build the sharded model and optimizers"):
        bench = ConfigBenchmark(name, config, settings, ctx, workdir)
    out: dict[str, Any] = {
        "config": name,
        "batch_size": bench.batch_size,
        "gradient_accumulation_steps": bench.accumulation,
        "eval_batch_size": bench.eval_batch_size,
        "input_features": _input_features(bench.model),
        "dense_parameters": _dense_parameters(bench.model),
        "build_peak_rss_bytes": bench.build_peak_rss,
        "num_threads": torch.get_num_threads(),
        "dense_optimizer": {
            "class": type(bench.dense_optimizer.optimizer).__name__,
            "fused": bench.dense_optimizer.fused,
            "clip_grad_norm": config.training.clip_grad_norm,
        },
        "peak": {}, "flops_per_example": {}, "train": {}, "eval": {},
    }
    if settings.compile:
        out["compile"] = {}
    for precision in settings.precisions:
        with phase(f"{precision} matmul peak on the model's shapes"):
            flops, shapes = bench.flops_and_shapes(precision)
            measured = _peak_shapes(shapes, settings.peak_flops_share)
            peak = perf.matmul_peak(measured, _DTYPES[precision], settings.peak_seconds)
        out["flops_per_example"][precision] = flops / bench.batch_size
        out["peak"][precision] = {
            "gflops_per_second": peak.gflops,
            "best_shape": str(peak.best_shape),
            "best_backend": peak.best_backend,
            "per_backend": peak.per_backend,
            "model_weighted_gflops_per_second": peak.weighted_gflops(measured),
            "per_shape": {str(s): {"gflops_per_second": g, "model_gflop_per_step": measured[s] / 1e9}
                          for s, g in peak.per_shape.items()},
            "unmeasured_gflop_per_step": (sum(shapes.values()) - sum(measured.values())) / 1e9,
        }
        with phase(f"{precision} training"):
            train = bench.train(precision, flops)
        train["mfu"] = train["gflops_per_second"] / peak.gflops
        out["train"][precision] = train
        if settings.compile:
            with phase(f"{precision} training compiled, towers grouped and one by one"):
                out["compile"][precision] = compile_figures(bench, precision, flops, peak.gflops, train)
        with phase(f"{precision} evaluation"):
            out["eval"][precision] = bench.evaluate(precision)
        out["eval"][precision]["vs_train"] = (out["eval"][precision]["examples_per_second"]
                                              / train["examples_per_second"])
    fastest = _pick_training_precision(out)
    with phase("write temporary parquet data"):
        data_config, rows = bench.write_data()
    with phase("loader"):
        out["loader"] = bench.loader(data_config)
    out["loader"]["rows_in_file"] = rows
    with phase("loader on the prepared layout"):
        prepared = bench.loader(bench.prepare_data(data_config))
    prepared["vs_parquet"] = prepared["rows_per_second"] / out["loader"]["rows_per_second"]
    out["loader"]["prepared"] = prepared
    out["loader"]["vs_train"] = {p: out["loader"]["rows_per_second"] / t["examples_per_second"]
                                 for p, t in out["train"].items()}
    with phase(f"{fastest} loader + training pipeline"):
        pipeline = bench.pipeline(data_config, fastest)
    pipeline["precision"] = fastest
    pipeline["vs_in_memory"] = pipeline["examples_per_second"] / out["train"][fastest]["examples_per_second"]
    out["pipeline"] = pipeline
    out["phase_seconds"] = phase.seconds
    return out


# --- multi-rank ------------------------------------------------------------------------------------------------------
def _worker_main(argv: list[str]) -> int:
    """Under torchrun: time the in-memory training step on every rank (fixed step count: the step is collective)."""
    import argparse

    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--output", required=True)
    parser.add_argument("--data-batches", type=int, default=0,
                        help="train on this many batches read from the config's training data (0: random batches)")
    args = parser.parse_args(argv)
    ctx = init_distributed("cpu")
    config = load_recap_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-rank-") as tmp:
        bench = ConfigBenchmark("worker", config, BenchmarkSettings(), ctx, Path(tmp))
        if args.data_batches:
            bench.batches = read_batches(config, bench.tasks, args.data_batches, ctx.rank, ctx.world_size)
        loop = bench._loop(args.precision, _InMemoryData(bench.batches))
        step = _train_step_of(loop)
        data = _cycle(bench.batches)
        bench.model.train()
        with perf.peak_rss_window() as mem:
            timing = perf.time_call(lambda: step(data), warmup=2, min_repeats=args.steps, max_repeats=args.steps,
                                    budget_seconds=0.0)
        rate = torch.tensor([bench.batch_size * bench.accumulation / timing.best,
                             bench.batch_size * bench.accumulation / timing.median, float(mem["peak_rss"])])
        rates = [torch.zeros_like(rate) for _ in range(ctx.world_size)]
        torch.distributed.all_gather(rates, rate)
    if ctx.is_main:
        Path(args.output).write_text(json.dumps({
            "world_size": ctx.world_size,
            "threads_per_rank": torch.get_num_threads(),
            "examples_per_second": sum(r[0].item() for r in rates),
            "median_examples_per_second": sum(r[1].item() for r in rates),
            "per_rank_examples_per_second": [r[0].item() for r in rates],
            "per_rank_peak_rss_bytes": [int(r[2].item()) for r in rates],
        }))
    torch.distributed.destroy_process_group()
    return 0


def multi_rank(config_path: Path, overrides: tuple[str, ...], nproc: int, precision: str, steps: int,
               workdir: Path, data_batches: int = 0) -> dict[str, Any]:
    """Launch the training-step benchmark on nproc ranks with torchrun (on random batches, or on data_batches
    batches per rank read from the config's training data); {} with an error message if it failed."""
    output = workdir / f"torchrun_{nproc}.json"
    workdir.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "projects.home.recap.benchmark", "--config", str(config_path), "--precision", precision,
           "--steps", str(steps), "--output", str(output), "--data-batches", str(data_batches)]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ)
    # One OpenMP thread per rank per core share, as torchrun would pick; explicit so the figure is reproducible.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not output.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"torchrun exited with {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(output.read_text())
    result["precision"] = precision
    result["wall_seconds"] = time.perf_counter() - start
    return result


# --- with and without an engagement history, on the same data ----------------------------------------------------------
HISTORY_PAIR = (("demo", CONFIG_DIR / "demo.yaml"), ("demo_history", CONFIG_DIR / "demo_history.yaml"))


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


def interleaved_timing(steps: dict[str, Callable[[], object]], calls: dict[str, int], budget_seconds: float,
                       min_rounds: int = 3) -> dict[str, perf.Timing]:
    """Time each step in windows of calls[name] calls, the steps taking turns window by window, so that a burst of
    other work on a shared machine slows both alike; the best and the median window of each."""
    windows: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < budget_seconds:
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                step()
            windows[name].append((time.perf_counter() - t0) / calls[name])
        rounds += 1
    return {name: perf.Timing(min(w), float(np.median(w)), len(w), calls[name]) for name, w in windows.items()}


def history_comparison(data_dir: Path, settings: BenchmarkSettings, batches: int = 8,
                       pair: tuple[tuple[str, Path], ...] = HISTORY_PAIR) -> dict[str, Any]:
    """Training rows/s of each config of `pair` (the first without the history, the second with it) on the same
    data, data_dir (written by `recap data generate --history-length L`): the training loop's step on `batches`
    batches read by each config's own loader, fp32, timed in turns in one process; then the same on
    settings.torchrun_nproc ranks under torchrun (each config in turn, twice, the best kept), as `make demo`
    trains. Reports rows/s and the ratio with/without."""
    os.environ["RECAP_DATA_DIR"] = str(data_dir)  # the demo configs' data paths; torchrun workers inherit it
    ctx = init_distributed("cpu")
    overrides = list(settings.overrides)
    if settings.batch_size is not None:
        overrides.append(f"data.batch_size={settings.batch_size}")
    out: dict[str, Any] = {"data": str(data_dir), "batches": batches, "configs": [n for n, _ in pair]}
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-history-") as tmp:
        steps, calls, rows = {}, {}, {}
        for name, path in pair:
            config = load_recap_config(path, overrides)
            bench = ConfigBenchmark(name, config, settings, ctx, Path(tmp) / name)
            bench.batches = read_batches(config, bench.tasks, batches)
            step = _train_step_of(bench._loop("fp32", _InMemoryData(bench.batches)))
            data = _cycle(bench.batches)
            bench.model.train()
            step(data)  # the first step allocates the optimizer's and the autograd's buffers
            t0 = time.perf_counter()
            step(data)
            calls[name] = max(1, round(settings.window_seconds / max(time.perf_counter() - t0, 1e-6)))
            steps[name] = (lambda step=step, data=data: step(data))
            rows[name] = bench.batch_size * bench.accumulation
            items = [int(b.sequences[g]["lengths"].sum()) for b in bench.batches for g in b.sequences]
            if items:
                out["history_items_per_row"] = sum(items) / sum(b.batch_size for b in bench.batches)
        timings = interleaved_timing(steps, calls, settings.train_seconds * len(pair))
        out["one_rank"] = {name: {"rows_per_second": rows[name] / t.best,
                                  "median_rows_per_second": rows[name] / t.median, "step": _timing_json(t)}
                           for name, t in timings.items()}
        without, with_ = (n for n, _ in pair)
        out["one_rank"]["ratio"] = (out["one_rank"][with_]["rows_per_second"]
                                    / out["one_rank"][without]["rows_per_second"])
        if settings.torchrun_nproc > 1:
            ranks: dict[str, Any] = {}
            for _ in range(2):
                for name, path in pair:
                    r = multi_rank(path, tuple(overrides), settings.torchrun_nproc, "fp32", settings.torchrun_steps,
                                   Path(tmp) / name, data_batches=batches)
                    if "error" in r or r["examples_per_second"] > ranks.get(name, {}).get("examples_per_second", 0):
                        ranks[name] = r
            if all("examples_per_second" in ranks[n] for n in (without, with_)):
                ranks["ratio"] = ranks[with_]["examples_per_second"] / ranks[without]["examples_per_second"]
            out["torchrun"] = ranks
    return out


def format_history_comparison(doc: dict[str, Any]) -> str:
    """The with/without history figures as a text table."""
    without, with_ = doc["configs"]
    lines = [f"training rows/s on the same data ({doc['data']}; {doc.get('history_items_per_row', 0):.1f} history "
             f"items per row), fp32, best window (median):",
             f"{'ranks':<10} {without + ' rows/s':>24} {with_ + ' rows/s':>28} {'ratio':>7}"]
    one = doc["one_rank"]
    rows = [("1", one[without]["rows_per_second"], one[without]["median_rows_per_second"],
             one[with_]["rows_per_second"], one[with_]["median_rows_per_second"], one["ratio"])]
    ranks = doc.get("torchrun")
    if ranks and "ratio" in ranks:
        rows.append((str(ranks[with_]["world_size"]), ranks[without]["examples_per_second"],
                     ranks[without]["median_examples_per_second"], ranks[with_]["examples_per_second"],
                     ranks[with_]["median_examples_per_second"], ranks["ratio"]))
    for label, a, am, b, bm, ratio in rows:
        lines.append(f"{label:<10} {f'{a:,.0f} ({am:,.0f})':>24} {f'{b:,.0f} ({bm:,.0f})':>28} {ratio:>6.2f}x")
    if ranks:
        for name in (without, with_):
            if "error" in ranks.get(name, {}):
                lines.append(f"{name}: torchrun failed: {ranks[name]['error']}")
    return "\n".join(lines)


# --- the whole run ---------------------------------------------------------------------------------------------------
def run_benchmark(settings: BenchmarkSettings) -> dict[str, Any]:
    """Every figure for every config, as one JSON-ready document."""
    start = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(), "settings": _settings_json(settings), "configs": {}}
    ctx = init_distributed("cpu")
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-") as tmp:
        for name, path in settings.configs:
            overrides = list(settings.overrides)
            if settings.batch_size is not None:
                overrides.append(f"data.batch_size={settings.batch_size}")
            config = load_recap_config(path, overrides)
            workdir = Path(tmp) / name
            result = benchmark_config(name, config, settings, ctx, workdir)
            if settings.torchrun_nproc > 1:
                fastest = result["pipeline"]["precision"]
                logger.info("%s: %d ranks under torchrun", name, settings.torchrun_nproc)
                ranks = multi_rank(Path(path), tuple(overrides), settings.torchrun_nproc, fastest,
                                   settings.torchrun_steps, workdir)
                if "examples_per_second" in ranks:
                    ranks["vs_one_rank"] = ranks["examples_per_second"] / result["train"][fastest]["examples_per_second"]
                result["torchrun"] = ranks
            doc["configs"][name] = result
    doc["machine"]["load_average_end"] = list(perf.load_average())
    doc["seconds"] = time.perf_counter() - start
    return doc


def _settings_json(settings: BenchmarkSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d["configs"] = [[n, str(p)] for n, p in settings.configs]
    return d


# --- the table -------------------------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def format_report(doc: dict[str, Any]) -> str:
    """The figures as text tables a person reads."""
    m = doc["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}; ISA {' '.join(m['cpu_flags']) or '?'}",
        f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in m['load_average'])}, "
        f"end {' '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}; figures are the best of short windows "
        "(medians in the JSON)",
        "",
    ]
    header = (f"{'config':<12} {'prec':<5} {'peak GF/s':>10} {'(shape, backend)':<24} {'train ex/s':>11} "
              f"{'GF/s':>7} {'MFU':>6} {'eval ex/s':>10} {'eval/train':>10} {'train RSS MB':>13}")
    lines += [header, "-" * len(header)]
    for name, r in doc["configs"].items():
        for p, t in r["train"].items():
            peak = r["peak"][p]
            ev = r["eval"][p]
            lines.append(
                f"{name:<12} {p:<5} {peak['gflops_per_second']:>10,.0f} "
                f"{peak['best_shape'] + ', ' + peak['best_backend']:<24} {t['examples_per_second']:>11,.0f} "
                f"{t['gflops_per_second']:>7,.0f} {t['mfu']:>6.1%} {ev['examples_per_second']:>10,.0f} "
                f"{ev['vs_train']:>9.1f}x {_mb(t['peak_rss_bytes']):>13}"
            )
    lines.append("")
    header = (f"{'config':<12} {'params':>8} {'batch':>6} {'MFLOP/ex':>9} {'loader rows/s':>14} {'loader/train':>13} "
              f"{'pipeline ex/s':>14} {'vs memory':>10} {'worker RSS MB':>14} {'2-rank ex/s':>12} {'vs 1 rank':>10}")
    lines += [header, "-" * len(header)]
    for name, r in doc["configs"].items():
        loader, pipe = r["loader"], r["pipeline"]
        p = pipe["precision"]
        ranks = r.get("torchrun", {})
        two = f"{ranks['examples_per_second']:,.0f}" if "examples_per_second" in ranks else (
            "failed" if "error" in ranks else "-")
        vs = f"{ranks['vs_one_rank']:.2f}x" if "vs_one_rank" in ranks else "-"
        worker = _mb(loader["worker_peak_rss_bytes"]) if loader["num_workers"] else "in-process"
        lines.append(
            f"{name:<12} {r['dense_parameters'] / 1e6:>7.1f}M {r['batch_size']:>6} "
            f"{r['flops_per_example'][p] / 1e6:>9.1f} {loader['rows_per_second']:>14,.0f} "
            f"{loader['vs_train'][p]:>12.1f}x {pipe['examples_per_second']:>14,.0f} "
            f"{pipe['vs_in_memory']:>9.1%} {worker:>14} {two:>12} {vs:>10}"
        )
    lines.append("")
    lines += format_compile_table(doc)
    lines.append("pipeline = loader + sharded model + optimizers in the fastest precision (shown per config in the "
                 "JSON); loader/train compares with that precision's in-memory training; MFU = achieved GFLOP/s "
                 "(torch.utils.flop_counter, forward+backward) / the measured peak.")
    for name, r in doc["configs"].items():
        opt = r["dense_optimizer"]
        lines.append(
            f"{name}: {r['input_features']:,} input features, {r['dense_parameters']:,} dense parameters, batch "
            f"{r['batch_size']}, dense {opt['class']}{' (fused)' if opt['fused'] else ''}, gradient clipping "
            f"{opt['clip_grad_norm'] or 'off'}, loader num_workers {r['loader']['num_workers']}; measured in "
            f"{sum(r['phase_seconds'].values()):.0f} s"
        )
        prepared = r["loader"].get("prepared")
        if prepared:
            lines.append(f"{name}: loader on the prepared layout (`recap data prepare`): "
                         f"{prepared['rows_per_second']:,.0f} rows/s, {prepared['vs_parquet']:.1f}x parquet")
        if "error" in r.get("torchrun", {}):
            lines.append(f"{name}: torchrun failed: {r['torchrun']['error']}")
    lines.append(f"total {doc['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
