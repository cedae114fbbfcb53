"""Offline evaluation of the recap ranker: exact metrics per validation set and task, reports and TensorBoard.

    evaluator = build_evaluator(config, model, ctx, tasks)        # the training loop's `evaluate` callable
    scalars = evaluator(step, template_batch)                     # {TensorBoard tag: value}; writes the report
    evaluate_checkpoint(config, "latest", ["test"], ctx)          # `recap evaluate`

Every rank runs the model over its share of each validation set (ranks that run out first keep stepping with
zero-weight padding batches: the sharded lookups are collective); MetricsAccumulator computes the exact metrics
over every rank's rows (on several ranks without gathering them: core.sharded_metrics), and rank 0 writes
SAVE_DIR/eval/<dataset>/step_<N>/{metrics.json, curves.json, report.md, report.html}. Predictions are the model's
calibrated probabilities; labels and weights are the batch's (weights include the downsampling correction, so the
metrics estimate those of the undownsampled data).

Beside it: the group ids of grouped metrics (eval_groups.py), the reports, TensorBoard scalars and summary table
(eval_report.py), and `recap evaluate --watch` (eval_watch.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.batch import RecapBatch
from core.checkpoint import Checkpoint
from core.config import ConfigError
from core.distributed import DistributedContext
from core.log import get_logger
from core.metrics_accumulator import MetricsAccumulator
from core.progress import Progress
from core.ranking_metrics import gate_statistics
from core.report import eval_step_dir
from core.storage import location
from core.tensorboard import MetricsWriter
from core.train_loop import TENSORBOARD_DIR
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.eval_groups import GroupColumn
from projects.home.recap.eval_report import (
    eval_scalars,
    summary_lines,
    training_scalars,
    write_dataset_report,
)
from projects.home.recap.inference import (
    inference_mode,
    load_sharded_for_inference,
    padding_batch,
    rank_rows,
    run_model,
)
from projects.home.recap.schema import RecapConfig

__all__ = [
    "Evaluator",
    "GateTotals",
    "build_evaluator",
    "evaluate_checkpoint",
    "evaluation_datasets",
    "validation_loaders",
]

logger = get_logger(__name__)


class GateTotals:
    """Per gate of an expert mixture, the sums over evaluated rows of the gate weights and of each row's entropy."""

    def __init__(self) -> None:
        # gate -> [weight sum [K], entropy sum], float64 on the outputs' device (read once, at the end), and rows.
        self.sums: dict[str, list] = {}

    def update(self, outputs: dict[str, torch.Tensor]) -> None:
        for key, weights in outputs.items():
            if not key.startswith("gates/"):
                continue
            w = weights.detach().double()
            entry = self.sums.setdefault(key[len("gates/"):], [w.new_zeros(w.shape[1]), w.new_zeros(()), 0])
            entry[0] += w.sum(dim=0)
            entry[1] -= (w * torch.log(w.clamp_min(1e-30))).sum()
            entry[2] += int(w.shape[0])

    def statistics(self, ctx: DistributedContext) -> dict[str, dict]:
        """Collective: {gate: core.ranking_metrics.gate_statistics} over every rank's rows ({} without gates)."""
        parts = [{k: (v[0].cpu().numpy(), float(v[1]), v[2]) for k, v in self.sums.items()}]
        if ctx.world_size > 1:
            gathered: list = [None] * ctx.world_size
            dist.all_gather_object(gathered, parts[0])
            parts = gathered
        totals: dict[str, list] = {}
        for part in parts:
            for gate, (weight_sum, entropy_sum, rows) in part.items():
                entry = totals.setdefault(gate, [np.zeros_like(weight_sum), 0.0, 0])
                entry[0] = entry[0] + weight_sum
                entry[1] += entropy_sum
                entry[2] += rows
        return {gate: gate_statistics(*totals[gate]) for gate in sorted(totals)}


# --- the evaluator ---------------------------------------------------------------------------------------------------
class Evaluator:
    """Exact metrics of a model on validation sets; callable as the training loop's periodic evaluation."""

    def __init__(
        self,
        model: nn.Module,
        loaders: dict[str, RecapDataLoader],
        task_names: list[str],
        ctx: DistributedContext,
        *,
        loss_weights: list[float] | None = None,
        stratifiers: dict[str, int] | None = None,
        group_column: GroupColumn | None = None,
        request_column: GroupColumn | None = None,
        ndcg_k: list[int] | None = None,
        score_weights: list[float] | None = None,
        curve_points: int = 200,
        bf16: bool = False,
        save_dir: str | os.PathLike | None = None,
        max_batches: int | None = None,
        padding: Callable[[str], RecapBatch] | None = None,
    ) -> None:
        """stratifiers: {column name: index in batch.discrete}; request_column: the requests of the per-request
        ranking metrics (NDCG@k for each ndcg_k, of the score with score_weights and of each task); padding(dataset)
        gives a batch for a rank with no rows of that dataset; max_batches limits the collective steps per dataset
        (None: every row)."""
        if loss_weights is not None and len(loss_weights) != len(task_names):
            raise ValueError(f"{len(task_names)} tasks but {len(loss_weights)} loss weights")
        self.model = model
        self.loaders = loaders
        self.task_names = list(task_names)
        self.ctx = ctx
        self.loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(task_names)
        self.stratifiers = dict(stratifiers or {})
        self.group_column = group_column
        self.request_column = request_column
        self.ndcg_k = list(ndcg_k or [5, 10])
        self.score_weights = None if score_weights is None else list(score_weights)
        self.curve_points = curve_points
        self.bf16 = bf16
        self.save_dir = location(save_dir) if save_dir is not None else None
        self.max_batches = max_batches
        self.padding = padding

    def _template(self, name: str, template: RecapBatch | None) -> RecapBatch | None:
        if template is None and len(self.loaders[name]) == 0 and self.padding is not None:
            return self.padding(name)
        return template

    def evaluate_dataset(
        self, name: str, step: int, template: RecapBatch | None = None, checkpoint: str | None = None
    ) -> tuple[dict | None, dict | None]:
        """Collective: (metrics.json, curves.json) documents of one validation set on rank 0, (None, None)
        elsewhere."""
        accumulator = MetricsAccumulator()
        gates = GateTotals()
        columns = torch.tensor(list(self.stratifiers.values()), dtype=torch.int64)
        loader = self.loaders[name]
        # Rank 0's own share: counting the others' rows would take a collective per batch.
        shard = f" (rank 0's share of {self.ctx.world_size})" if self.ctx.world_size > 1 else ""
        with inference_mode(self.model, self.ctx.device, self.bf16), \
                Progress(f"evaluating {name}{shard}", rank_rows(loader, self.ctx, self.max_batches),
                         enabled=self.ctx.is_main) as progress:
            for batch, outputs in run_model(self.model, loader, self.ctx, self._template(name, template),
                                            self.max_batches):
                progress.update(batch.batch_size)
                accumulator.update(
                    outputs["calibrated_probabilities"],
                    batch.labels,
                    batch.weights,
                    stratifiers=batch.discrete.index_select(1, columns.to(batch.discrete.device))
                    if self.stratifiers else None,
                    group_ids=self.group_column.ids(batch) if self.group_column is not None else None,
                    oracle=batch.oracle,
                    request_ids=self.request_column.ids(batch) if self.request_column is not None else None,
                )
                gates.update(outputs)
        names = list(self.stratifiers)
        gate_stats = gates.statistics(self.ctx)
        metrics = accumulator.compute(self.task_names, names, dataset=name, step=step, checkpoint=checkpoint,
                                      ndcg_ks=self.ndcg_k, score_weights=self.score_weights,
                                      request_column=None if self.request_column is None else self.request_column.name)
        if metrics is not None and gate_stats:
            metrics["gates"] = gate_stats
        curves = accumulator.curves(self.task_names, self.curve_points, dataset=name, step=step,
                                    checkpoint=checkpoint)
        return metrics, curves

    def evaluate(self, step: int, template: RecapBatch | None = None, checkpoint: str | None = None,
                 report_errors_fatal: bool = True) -> dict[str, dict]:
        """Collective: {dataset: metrics.json document} on rank 0 ({} elsewhere); rank 0 writes each dataset's
        report under save_dir/eval/<dataset>/step_<step>/ (a report that cannot be written is logged, not raised,
        unless report_errors_fatal)."""
        documents: dict[str, dict] = {}
        scalars = None
        for name in self.loaders:
            start = time.perf_counter()
            metrics, curves = self.evaluate_dataset(name, step, template, checkpoint)
            if metrics is None:
                continue
            documents[name] = metrics
            rows = max((block.get("rows", 0) for block in metrics["tasks"].values()), default=0)
            logger.info("evaluated %s at step %d: %d rows in %.1fs", name, step, rows, time.perf_counter() - start)
            if self.save_dir is not None:
                report_dir = eval_step_dir(self.save_dir, name, step)
                try:
                    if scalars is None:
                        scalars = training_scalars(self.save_dir)
                    write_dataset_report(report_dir, metrics, curves, scalars)
                except Exception as exc:
                    if report_errors_fatal:
                        raise
                    # The metrics were computed and are returned; only their files are missing.
                    logger.error("evaluation of %s at step %d: the report in %s could not be written (%s: %s)", name,
                                 step, report_dir, type(exc).__name__, exc)
        return documents

    def scalars(self, documents: dict[str, dict]) -> dict[str, float]:
        """TensorBoard scalars of metrics documents (eval_report.eval_scalars, with this evaluator's loss weights)."""
        return eval_scalars(documents, self.task_names, self.loss_weights)

    def write_tensorboard(self, documents: dict[str, dict], step: int) -> None:
        """Rank 0: the documents' scalars at `step` into save_dir's TensorBoard events (`recap evaluate`; during
        training the loop writes the scalars __call__ returns)."""
        if not self.ctx.is_main or not documents or self.save_dir is None:
            return
        writer = MetricsWriter(self.save_dir / TENSORBOARD_DIR)
        try:
            writer.scalars(self.scalars(documents), step)
        finally:
            writer.close()

    def __call__(self, step: int, template: Any = None) -> dict[str, float]:
        """The training loop's evaluation: every validation set at `step` (collective); the scalars on rank 0,
        {} on other ranks."""
        # During training a failing report writer must not stop the run (a failing metric still does).
        documents = self.evaluate(step, template, report_errors_fatal=False)
        for line in summary_lines(documents):
            logger.info("%s", line)
        return self.scalars(documents)


def evaluation_datasets(config: RecapConfig, names: list[str] | None = None) -> list[str]:
    """The validation sets to evaluate: `names`, else evaluation.datasets, else all of data.validation."""
    if not config.data.validation:
        raise ConfigError("data.validation is empty: there is no validation set to evaluate")
    chosen = list(names or config.evaluation.datasets or config.data.validation)
    unknown = [n for n in chosen if n not in config.data.validation]
    if unknown:
        raise ConfigError(f"data.validation has no dataset {unknown} (known: {sorted(config.data.validation)})")
    return chosen


def validation_loaders(
    config: RecapConfig, names: list[str], task_names: list[str], ctx: DistributedContext
) -> dict[str, RecapDataLoader]:
    """This rank's eval-mode loaders of the named validation sets (their files and columns are checked here)."""
    pin = ctx.device.type == "cuda"
    return {
        name: RecapDataLoader(config.data, config.data.validation[name], task_names, "eval", ctx.rank,
                              ctx.world_size, pin_memory=pin)
        for name in names
    }


def build_evaluator(
    config: RecapConfig,
    model: nn.Module,
    ctx: DistributedContext,
    task_names: list[str],
    loaders: dict[str, RecapDataLoader] | None = None,
    max_batches: int | None = None,
) -> Evaluator:
    """The Evaluator of a config: the given loaders (default: those of evaluation_datasets), the stratifiers, the
    group AUC column, curve points, precision and save_dir."""
    if loaders is None:
        loaders = validation_loaders(config, evaluation_datasets(config), task_names, ctx)
    schema = config.data.features
    scalar_discrete = {c.name for c in schema.discrete if c.length is None}

    def id_column(name: str | None, setting: str) -> GroupColumn | None:
        if name is None:
            return None
        return GroupColumn(name, schema.discrete_index(name) if name in scalar_discrete else None, setting)

    def padding(name: str) -> RecapBatch:
        return padding_batch(config.data, config.data.validation[name], task_names, "eval")

    return Evaluator(
        model,
        loaders,
        task_names,
        ctx,
        loss_weights=[config.model.tasks[t].loss_weight for t in task_names],
        stratifiers={s: schema.discrete_index(s) for s in config.evaluation.stratifiers},
        group_column=id_column(config.evaluation.group_auc_column, "evaluation.group_auc_column"),
        request_column=id_column(config.evaluation.request_column, "evaluation.request_column"),
        ndcg_k=config.evaluation.ndcg_k,
        score_weights=config.model.score_weights(),
        curve_points=config.evaluation.curve_points,
        bf16=config.training.mixed_precision == "bf16",
        save_dir=config.training.save_dir,
        max_batches=max_batches,
        padding=padding,
    )


# --- `recap evaluate` ------------------------------------------------------------------------------------------------
def evaluate_checkpoint(
    config: RecapConfig,
    checkpoint: str | os.PathLike | None,
    datasets: list[str] | None,
    ctx: DistributedContext,
) -> tuple[Checkpoint, dict[str, dict]]:
    """Evaluate one checkpoint (default: training.save_dir's best when marked, else its newest) on every row of the
    validation sets; collective. Returns the checkpoint and, on rank 0, {dataset: metrics.json document}."""
    # The model's task order is the config's (the factory builds one head per model.tasks entry, in order).
    tasks = list(config.model.tasks)
    loaders = validation_loaders(config, evaluation_datasets(config, datasets), tasks, ctx)
    model, found = load_sharded_for_inference(config, checkpoint, ctx)
    evaluator = build_evaluator(config, model, ctx, tasks, loaders)
    documents = evaluator.evaluate(found.step, checkpoint=str(found.path))
    evaluator.write_tensorboard(documents, found.step)
    return found, documents
