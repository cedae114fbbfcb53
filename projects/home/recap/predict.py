"""Batch scoring: every rank scores its share of the input parquet rows with a checkpoint and writes its own part
file OUTPUT/part-<rank>-of-<world>.parquet.

Columns: the data.features.ids columns (as read), then for each task `<task>.probability` (sigmoid of the logit,
the rate in the downsampled training data) and `<task>.calibrated` (corrected back to the true rate with the task's
pos_rate/neg_rate), then, with model.scoring, `score` (the weighted sum of the calibrated probabilities). Label columns are not needed. Ranks that run out of rows first keep stepping with zero-weight
padding batches (the sharded lookups are collective); a rank without rows writes no file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from core.distributed import DistributedContext, all_reduce_sum, barrier
from core.log import get_logger
from core.object_path import ObjectPath
from core.progress import Progress
from core.storage import location
from core.storage_ops import upload_file
from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.inference import (
    inference_mode,
    load_sharded_for_inference,
    padding_batch,
    rank_rows,
    run_model,
)
from projects.home.recap.schema import RecapConfig

__all__ = ["PredictError", "PredictResult", "check_output", "part_name", "predict", "prediction_columns"]

logger = get_logger(__name__)

PROBABILITY_SUFFIX = ".probability"
CALIBRATED_SUFFIX = ".calibrated"
SCORE_COLUMN = "score"
_PART = re.compile(r"^part-\d+-of-\d+\.parquet$")
# Rows buffered before a row group is written: large row groups read fast, and memory stays bounded.
_ROW_GROUP_ROWS = 65_536


class PredictError(RuntimeError):
    """The output directory cannot be used; the message names it."""


@dataclass
class PredictResult:
    rows: int  # rows scored over all ranks
    files: list[Path | ObjectPath]  # this rank's part files


def part_name(rank: int, world_size: int) -> str:
    """The part file a rank writes."""
    return f"part-{rank:05d}-of-{world_size:05d}.parquet"


def prediction_columns(task_names: list[str], scored: bool = False) -> list[str]:
    """The prediction columns, in output order: <task>.probability and <task>.calibrated per task, then score when
    the model has scoring weights."""
    columns = [f"{t}{suffix}" for t in task_names for suffix in (PROBABILITY_SUFFIX, CALIBRATED_SUFFIX)]
    return columns + ([SCORE_COLUMN] if scored else [])


def check_output(output_dir: str | os.PathLike, overwrite: bool) -> Path | ObjectPath:
    """The output directory (or object-store prefix), after checking it holds no earlier predictions (or, with
    overwrite, only part files, which are then removed by the caller)."""
    out = location(output_dir)
    if out.exists() and not out.is_dir():
        raise PredictError(f"output {out} exists and is not a directory")
    if out.is_dir():
        parts = [p.name for p in out.iterdir() if _PART.match(p.name)]
        if parts and not overwrite:
            raise PredictError(f"output directory {out} already holds predictions ({parts[0]}, ...); choose another "
                               "or pass --overwrite")
    return out


def _table(batch, outputs: dict[str, torch.Tensor], task_names: list[str], id_columns: list[str]) -> pa.Table:
    columns: dict[str, pa.Array] = {name: pa.array(batch.ids[name]) for name in id_columns}
    probabilities = outputs["probabilities"].float().cpu().numpy()
    calibrated = outputs["calibrated_probabilities"].float().cpu().numpy()
    for t, task in enumerate(task_names):
        columns[task + PROBABILITY_SUFFIX] = pa.array(np.ascontiguousarray(probabilities[:, t]))
        columns[task + CALIBRATED_SUFFIX] = pa.array(np.ascontiguousarray(calibrated[:, t]))
    if SCORE_COLUMN in outputs:
        columns[SCORE_COLUMN] = pa.array(outputs[SCORE_COLUMN].float().cpu().numpy())
    return pa.table(columns)


class _PartWriter:
    """One parquet file written in row groups of about _ROW_GROUP_ROWS rows, renamed into place when closed (on an
    object store: written to a local temporary file and uploaded when closed, so the part appears whole)."""

    def __init__(self, path: Path | ObjectPath) -> None:
        self.path = path
        self.remote = isinstance(path, ObjectPath)
        self.tmp: Path = (Path(tempfile.mkdtemp(prefix="recap-predict-")) / path.name
                          if isinstance(path, ObjectPath) else path.with_name(f".{path.name}.tmp"))
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= _ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows
        self._pending, self._pending_rows = [], 0

    def close(self) -> Path | ObjectPath | None:
        """Finish the file; None when no row was written."""
        self._flush()
        if self._writer is None:
            return None
        self._writer.close()
        if isinstance(self.path, ObjectPath):
            upload_file(self.tmp, self.path)
            shutil.rmtree(self.tmp.parent, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)
        if self.remote:
            shutil.rmtree(self.tmp.parent, ignore_errors=True)


def predict(
    config: RecapConfig,
    checkpoint: str | os.PathLike | None,
    inputs: list[str],
    output_dir: str | os.PathLike,
    ctx: DistributedContext,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> PredictResult:
    """Score the input parquet files (files, directories, globs) on every rank of the job (collective) and write
    this rank's part file into output_dir; returns the rows scored over all ranks and this rank's files."""
    out = check_output(output_dir, overwrite)
    tasks = list(config.model.tasks)
    dataset = DatasetConfig(paths=list(inputs))
    # Checked before the model is loaded: a bad input fails fast, naming the file and column.
    loader = RecapDataLoader(config.data, dataset, tasks, "predict", ctx.rank, ctx.world_size, batch_size,
                             pin_memory=ctx.device.type == "cuda")
    model, found = load_sharded_for_inference(config, checkpoint, ctx, loader.batch_size)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [p for p in out.iterdir() if _PART.match(p.name)]:
            stale.unlink()
    barrier(ctx)
    template = padding_batch(config.data, dataset, tasks, "predict") if len(loader) == 0 else None
    writer = _PartWriter(out / part_name(ctx.rank, ctx.world_size))
    id_columns = list(config.data.features.ids)
    logger.info("scoring %d rows of %s with %s on %d rank(s)", loader.num_rows, ", ".join(inputs), found.path,
                ctx.world_size)
    try:
        shard = f" (rank 0's share of {ctx.world_size})" if ctx.world_size > 1 else ""
        with inference_mode(model, ctx.device, config.training.mixed_precision == "bf16"), \
                Progress(f"scoring{shard}", rank_rows(loader, ctx), enabled=ctx.is_main) as progress:
            for batch, outputs in run_model(model, loader, ctx, template):
                writer.add(_table(batch, outputs, tasks, id_columns))
                progress.update(batch.batch_size)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    total = int(all_reduce_sum(torch.tensor([writer.rows], dtype=torch.int64, device=ctx.device), ctx).item())
    barrier(ctx)
    return PredictResult(total, [path] if path is not None else [])
