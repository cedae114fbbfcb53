"""Offline evaluation of the recap ranker: exact metrics per validation set and task, reports and TensorBoard.

    evaluator = build_evaluator(config, model, ctx, tasks)        # the training loop's `evaluate` callable
    scalars = evaluator(step, template_batch)                     # {TensorBoard tag: value}; writes the report
    evaluate_checkpoint(config, "latest", ["test"], ctx)          # `recap evaluate`
    watch_checkpoints(config, ctx, datasets)                      # `recap evaluate --watch`

Every rank runs the model over its share of each validation set (ranks that run out first keep stepping with
zero-weight padding batches: the sharded lookups are collective); MetricsAccumulator computes the exact metrics
over every rank's rows (on several ranks without gathering them: core.sharded_metrics), and rank 0 writes
SAVE_DIR/eval/<dataset>/step_<N>/{metrics.json, curves.json, report.md, report.html}. Predictions are the model's calibrated probabilities; labels and weights are the batch's
(weights include the downsampling correction, so the metrics estimate those of the undownsampled data).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.batch import RecapBatch
from core.checkpoint import Checkpoint, CheckpointError, list_checkpoints, read_best, read_info
from core.config import ConfigError
from core.distributed import DistributedContext
from core.log import get_logger
from core.metrics_accumulator import MetricsAccumulator
from core.object_path import ObjectPath
from core.progress import Progress
from core.ranking_metrics import gate_statistics
from core.report import eval_step_dir, metrics_to_scalars, read_training_scalars, write_report
from core.report.format import fixed_cell
from core.storage import location
from core.storage_ops import download_tree, staged_output
from core.tensorboard import MetricsWriter
from core.train_config import total_train_steps
from core.train_loop import CHECKPOINT_DIR, TENSORBOARD_DIR
from projects.home.recap.data import sharding
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.inference import (
    inference_mode,
    load_sharded_for_inference,
    load_weights,
    padding_batch,
    rank_rows,
    run_model,
)
from projects.home.recap.schema import RecapConfig

__all__ = [
    "Evaluator",
    "GroupColumn",
    "build_evaluator",
    "evaluate_checkpoint",
    "evaluation_datasets",
    "final_step",
    "group_ids_of",
    "summary_lines",
    "validation_loaders",
    "watch_checkpoints",
]

logger = get_logger(__name__)


# --- group ids for grouped AUC ---------------------------------------------------------------------------------------
def _stable_hash(text: bytes) -> int:
    # Python's hash() is salted per process; ranks must map the same id to the same group.
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


def group_ids_of(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """int64 group ids [B] of an id column: integers as they are, anything else (strings, bytes, floats, nulls) by
    a 64-bit hash of its text that is the same in every process."""
    if isinstance(values, torch.Tensor):
        return values.reshape(-1).to(torch.int64)
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return torch.from_numpy(array.astype(np.int64).reshape(-1))
    cache: dict[bytes, int] = {}
    out = np.empty(array.size, dtype=np.int64)
    for i, value in enumerate(array.reshape(-1).tolist()):
        text = value if isinstance(value, bytes) else str(value).encode("utf-8")
        found = cache.get(text)
        out[i] = found if found is not None else cache.setdefault(text, _stable_hash(text))
    return torch.from_numpy(out)


@dataclass(frozen=True)
class GroupColumn:
    """Where group ids come from (grouped AUC's users, ranking metrics' requests): a scalar discrete column (its
    index) or an id column."""

    name: str
    discrete_index: int | None = None
    setting: str = "evaluation.group_auc_column"

    def ids(self, batch: RecapBatch) -> torch.Tensor:
        """The batch's group ids, int64 [B]."""
        if self.discrete_index is not None:
            return batch.discrete[:, self.discrete_index]
        if self.name not in batch.ids:
            raise KeyError(f"{self.setting} {self.name!r} is not among the batch's id columns {sorted(batch.ids)}")
        return group_ids_of(batch.ids[self.name])


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
                        scalars = _training_scalars(self.save_dir)
                    with staged_output(report_dir) as local:  # uploaded whole on an object store
                        write_report(local, metrics, curves, scalars)
                except Exception as exc:
                    if report_errors_fatal:
                        raise
                    # The metrics were computed and are returned; only their files are missing.
                    logger.error("evaluation of %s at step %d: the report in %s could not be written (%s: %s)", name,
                                 step, report_dir, type(exc).__name__, exc)
        return documents

    def scalars(self, documents: dict[str, dict]) -> dict[str, float]:
        """TensorBoard scalars of metrics documents: eval/<dataset>/<task>/<metric> (and .../oracle/<metric>),
        and eval/<dataset>/loss, the loss-weighted sum of the tasks' log losses."""
        out: dict[str, float] = {}
        for name, metrics in documents.items():
            out.update(metrics_to_scalars(metrics))
            losses = [(w, metrics["tasks"].get(t, {}).get("logloss")) for t, w in zip(self.task_names,
                                                                                      self.loss_weights)]
            if any(loss is not None for _, loss in losses):
                out[f"eval/{name}/loss"] = sum(w * loss for w, loss in losses if loss is not None)
        return out

    def __call__(self, step: int, template: Any = None) -> dict[str, float]:
        """The training loop's evaluation: every validation set at `step` (collective); the scalars on rank 0,
        {} on other ranks."""
        # During training a failing report writer must not stop the run (a failing metric still does).
        documents = self.evaluate(step, template, report_errors_fatal=False)
        for line in summary_lines(documents):
            logger.info("%s", line)
        return self.scalars(documents)


def _training_scalars(save_dir: Path | ObjectPath) -> dict:
    """The run's TensorBoard scalars for the reports; on an object store its event files are read from a local
    copy."""
    if not isinstance(save_dir, ObjectPath):
        return read_training_scalars(save_dir)
    with tempfile.TemporaryDirectory(prefix="recap-events-") as local:
        download_tree(save_dir / TENSORBOARD_DIR, Path(local) / TENSORBOARD_DIR)
        return read_training_scalars(local)


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
def _write_tensorboard(evaluator: Evaluator, documents: dict[str, dict], step: int, ctx: DistributedContext) -> None:
    if not ctx.is_main or not documents or evaluator.save_dir is None:
        return
    writer = MetricsWriter(evaluator.save_dir / TENSORBOARD_DIR)
    try:
        writer.scalars(evaluator.scalars(documents), step)
    finally:
        writer.close()


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
    _write_tensorboard(evaluator, documents, found.step, ctx)
    return found, documents


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
        _write_tensorboard(evaluator, documents, step, ctx)
        done.append(step)
        if _broadcast(_is_final(config, checkpoint) if ctx.is_main else None, ctx):
            logger.info("step %d is the training's final step: stopping", step)
            return done


def summary_lines(documents: dict[str, dict]) -> list[str]:
    """A short plain-text table per dataset: rows, AUC, RCE, calibration per task, and the oracle's RCE when the
    data has one."""
    lines = []
    for name, metrics in documents.items():
        with_oracle = any("oracle" in block for block in metrics["tasks"].values())
        header = f"{name} (step {metrics.get('step')}): {'task':<24}{'rows':>9}{'AUC':>8}{'RCE':>8}{'calib':>8}"
        lines.append(header + (f"{'oracle RCE':>12}" if with_oracle else ""))
        for task, block in metrics["tasks"].items():
            cells = [fixed_cell(block.get("auc"), 8, 4), fixed_cell(block.get("rce"), 8, 2),
                     fixed_cell(block.get("calibration"), 8, 3)]
            if with_oracle:
                cells.append(fixed_cell((block.get("oracle") or {}).get("rce"), 12, 2))
            lines.append(f"  {task:<24}{block.get('rows', 0):>9}" + "".join(cells))
        ranking = metrics.get("ranking")
        if ranking and ranking.get("score"):
            ndcg = "  ".join(f"NDCG@{k} {fixed_cell(ranking['score'].get(f'ndcg@{k}'), 0, 4).strip()}"
                             for k in ranking["k"])
            # NDCG is averaged over the requests with a positive gain only (the others have no ideal order): both
            # counts, so a reader does not take the average for one over every request.
            counts = [ranking["score"].get(f"requests@{k}", 0) for k in ranking["k"]]
            averaged = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
            lines.append(f"  ranking score over {ranking['requests']} requests (NDCG averaged over the {averaged} "
                         f"with a positive gain): {ndcg}")
        for gate, stats in (metrics.get("gates") or {}).items():
            lines.append(f"  gate {gate}: entropy of mean weights "
                         f"{fixed_cell(stats.get('entropy_of_mean'), 0, 3).strip()} of at most "
                         f"{stats['max_entropy']:.3f}")
    return lines
