"""The dense part of the ranker on a GPU without torchrec: build it from a config, feed it synthetic batches (the
large tables' pooled output as a plain tensor of the right width), and measure training throughput and MFU.

FLOPs are counted as `recap benchmark` counts them on CPU (core/perf.py count_flops: one forward+backward of a
batch, torch.utils.flop_counter); MFU divides the achieved FLOP/s by the matmul_peak stage's measured peak in the
same precision (fp32 runs against the fp32 peak, tf32 runs against the tf32 peak, bf16 autocast against bf16).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from core import perf
from projects.home.recap.gpu_check.gpu import PRECISIONS, cuda_seconds, float32_matmul_precision
from projects.home.recap.gpu_check.stage_record import read_stage
from projects.home.recap.model import factory
from projects.home.recap.model.dense import DenseRankingModel
from projects.home.recap.model.loss import multi_task_bce
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig, load_recap_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
CONFIGS = ("demo", "recap_scale")
# Besides each config's own batch size: one big enough to keep a large GPU busy.
LARGE_BATCH = 8192
WARMUP_STEPS = 5
STEPS_PER_WINDOW = 10
WINDOWS = 3


def load_config(name: str, overrides: list[str] | None = None) -> RecapConfig:
    """projects/home/recap/config/<name>.yaml with --set style overrides."""
    return load_recap_config(CONFIG_DIR / f"{name}.yaml", overrides or [])


def build_dense(config: RecapConfig) -> DenseRankingModel:
    """The config's DenseRankingModel, built by the factory with the sparse lookup left out: no
    EmbeddingBagCollection is made (so torchrec is not needed), and the model's pooled_sparse input keeps the width
    of the configured tables' pooled output."""
    with (mock.patch.object(factory, "build_embedding_bag_collection", lambda tables, device="cpu": None),
          mock.patch.object(factory, "SparseIdTransform", lambda tables: None)):
        return factory.build_model(config).dense


@dataclass
class DenseBatch:
    """The dense model's five inputs with labels and weights, all on one device."""

    continuous: torch.Tensor
    binary: torch.Tensor
    discrete: torch.Tensor
    embeddings: torch.Tensor
    pooled_sparse: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.continuous, self.binary, self.discrete, self.embeddings, self.pooled_sparse


def dense_batch(config: RecapConfig, model: DenseRankingModel, batch_size: int, device: torch.device | str,
                seed: int = 0) -> DenseBatch:
    """A synthetic batch shaped like the config's data (model/synthetic_batch.py's draws: heavy-tailed
    continuous values with NaN and inf, small discrete ids), with the pooled large embeddings as a random tensor
    that asks for its gradient (in training that gradient reaches the tables)."""
    g = torch.Generator().manual_seed(seed)
    drawn = random_batch(config, batch_size, g, with_sparse=False)
    batch = DenseBatch(
        continuous=drawn.continuous,
        binary=drawn.binary,
        discrete=drawn.discrete,
        embeddings=drawn.embeddings,
        pooled_sparse=torch.randn(batch_size, model.pooled_sparse_dim, generator=g) * 0.1,
        labels=drawn.labels,
        weights=drawn.weights,
    )
    moved = DenseBatch(**{k: v.to(device) for k, v in vars(batch).items()})
    moved.pooled_sparse.requires_grad_(True)
    return moved


class DenseTrainer:
    """One training step of a dense model: forward (under bf16 autocast for "bf16"), the per-task weighted BCE of
    model/loss.py, backward, the config's gradient clipping and an Adam step."""

    def __init__(self, config: RecapConfig, model: DenseRankingModel, device: torch.device | str,
                 precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.model = model.to(device).train()
        self.precision = precision
        self.device = torch.device(device)
        tasks = config.model.tasks
        self.pos_weight = torch.tensor([tasks[t].pos_weight for t in model.task_names], device=device)
        self.loss_weight = torch.tensor([tasks[t].loss_weight for t in model.task_names], device=device)
        self.clip = config.training.clip_grad_norm
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        # Fused, as training's dense Adam is (core/optimizers.py): one kernel for every tensor's update.
        self.optimizer = torch.optim.Adam(self.parameters, lr=1e-3, fused=True)

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(float32_matmul_precision(PRECISIONS[self.precision][1]))
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        return stack

    def forward_backward(self, batch: DenseBatch) -> torch.Tensor:
        """The loss of one batch, with its gradients accumulated (no optimizer step)."""
        with self._context():
            outputs = self.model(*batch.inputs)
            loss, _ = multi_task_bce(outputs["logits"], batch.labels, batch.weights, self.pos_weight,
                                     self.loss_weight)
            loss.backward()
        return loss.detach()

    def step(self, batch: DenseBatch) -> torch.Tensor:
        """One optimizer step on one batch; the loss (not synchronized)."""
        loss = self.forward_backward(batch)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        batch.pooled_sparse.grad = None
        return loss


def measure_training(config: RecapConfig, batch_size: int, precision: str, peak_tflops: dict[str, float] | None,
                     device: str = "cuda") -> dict[str, Any]:
    """examples/s, TFLOP/s and MFU of WINDOWS x STEPS_PER_WINDOW training steps (best window) after a warm-up."""
    torch.manual_seed(0)
    model = build_dense(config)
    trainer = DenseTrainer(config, model, device, precision)
    batches = [dense_batch(config, model, batch_size, device, seed) for seed in range(4)]
    flops = perf.count_flops(lambda: trainer.forward_backward(batches[0]))
    trainer.optimizer.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    cycle = itertools.cycle(batches)
    losses: list[torch.Tensor] = []
    seconds = cuda_seconds(lambda: losses.append(trainer.step(next(cycle))), calls=STEPS_PER_WINDOW,
                           windows=WINDOWS, warmup=WARMUP_STEPS)
    last_loss = float(losses[-1])
    if not torch.isfinite(torch.stack(losses)).all():
        raise RuntimeError(f"non-finite training loss ({precision}, batch {batch_size})")
    tflops = flops / seconds / 1e12
    result = {
        "batch_size": batch_size,
        "precision": precision,
        "steps": len(losses),
        "step_ms": round(seconds * 1e3, 3),
        "examples_per_second": round(batch_size / seconds),
        "flops_per_example": flops // batch_size,
        "achieved_tflops": round(tflops, 2),
        "last_loss": round(last_loss, 5),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
    }
    if peak_tflops and precision in peak_tflops:
        result["mfu"] = round(tflops / peak_tflops[precision], 4)
    return result


def dense_train_stage(out: Path) -> dict[str, Any]:
    """Training throughput and MFU of the demo and recap_scale dense models, fp32 / tf32 / bf16, two batch sizes."""
    peak = read_stage(out, "matmul_peak")
    peak_tflops = peak["results"]["tflops"] if peak else None
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in CONFIGS:
        config = load_config(name)
        runs[name] = []
        for batch_size in sorted({config.data.batch_size, LARGE_BATCH}):
            for precision in PRECISIONS:
                runs[name].append(measure_training(config, batch_size, precision, peak_tflops))
                torch.cuda.empty_cache()
    best = []
    for name, results in runs.items():
        top = max(results, key=lambda r: r["examples_per_second"])
        mfu = f", MFU {top['mfu']:.1%}" if "mfu" in top else ""
        best.append(f"{name} {top['examples_per_second']:,} ex/s ({top['precision']}, batch {top['batch_size']}{mfu})")
    return {
        "headline": "; ".join(best),
        "results": {"runs": runs, "peak_tflops": peak_tflops,
                    "mfu_note": None if peak_tflops else "no MFU: the matmul_peak stage did not succeed"},
    }
