"""Streaming evaluation: collect every row's predictions on each rank, compute exact metrics over all ranks' rows.

Each rank calls `update` per batch (tensors are detached, cast and appended; no per-row work). `compute` and `curves`
are collective calls: every rank of the process group must call them, in the same order and with the same
arguments. Two ways to compute, with the same values (to the order of floating-point sums):

- "sharded" (core.sharded_metrics): the rows stay where they are; a distributed sort by score, small prefix-sum
  exchanges and all_reduces give every metric, and each group (request) is moved whole to one rank for the grouped
  and per-request metrics. Memory per rank O(rows / ranks). The default ("auto") on more than one rank.
- "gather": every row (variable length per rank, empty ranks allowed) is gathered to the destination rank (group
  rank 0, or all ranks), which computes on the whole set with core.metrics, core.metrics_curves and
  core.ranking_metrics: memory O(rows) there. The default on one rank, and the reference the sharded path is tested
  against.

Collectives run on the CPU for gloo and on the current CUDA device for NCCL. Without an initialized process group
both work on the local rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from core.collective import Collective, collective_device
from core.metrics import compute_metrics, metrics_document
from core.metrics_curves import compute_curves, curves_document
from core.ranking_metrics import ranking_block
from core.sharded_curves import sharded_curves
from core.sharded_metrics import sharded_metrics
from core.sharded_ranking import sharded_ranking_block

__all__ = ["METHODS", "MetricsAccumulator"]

METHODS = ("auto", "sharded", "gather")

_FLOAT_FIELDS = ("predictions", "labels", "weights", "oracle")


class MetricsAccumulator:
    """Per-rank buffers of (predictions, labels, weights, stratifiers, group ids, request ids, oracle) for exact
    metrics."""

    def __init__(self, process_group: dist.ProcessGroup | None = None, storage_device: str | torch.device = "cpu",
                 method: str = "auto"):
        """method: "sharded", "gather", or "auto" (sharded on more than one rank, else gather); see the module
        docstring."""
        if method not in METHODS:
            raise ValueError(f"MetricsAccumulator method must be one of {METHODS}, got {method!r}")
        self._group = process_group
        self._storage = torch.device(storage_device)
        self._method = method
        self.reset()

    def reset(self) -> None:
        """Forget every row (start a new evaluation)."""
        self._chunks: dict[str, list[torch.Tensor]] = {
            name: [] for name in ("predictions", "labels", "weights", "stratifiers", "group_ids", "request_ids",
                                  "oracle")
        }
        self._num_tasks = -1
        self._num_stratifiers = -1
        self._has_groups: bool | None = None
        self._has_requests: bool | None = None
        self._has_oracle: bool | None = None
        self._gathered: tuple[bool, dict[str, np.ndarray] | None] | None = None

    @property
    def num_rows(self) -> int:
        """Rows collected on this rank."""
        return sum(int(t.shape[0]) for t in self._chunks["predictions"])

    def update(
        self,
        predictions: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        stratifiers: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        oracle: torch.Tensor | None = None,
        request_ids: torch.Tensor | None = None,
    ) -> None:
        """Append a batch: predictions/labels/weights/oracle [B, T], stratifiers [B, S] int64, group_ids and
        request_ids [B] int64."""
        if predictions.dim() != 2:
            raise ValueError(f"predictions must have shape [B, T], got {tuple(predictions.shape)}")
        batch, num_tasks = predictions.shape
        for name, tensor in (("labels", labels), ("weights", weights), ("oracle", oracle)):
            if tensor is not None and tuple(tensor.shape) != (batch, num_tasks):
                raise ValueError(f"{name} must have the shape of predictions {(batch, num_tasks)}, "
                                 f"got {tuple(tensor.shape)}")
        if stratifiers is not None and (stratifiers.dim() != 2 or stratifiers.shape[0] != batch):
            raise ValueError(f"stratifiers must have shape [{batch}, S], got {tuple(stratifiers.shape)}")
        for name, ids in (("group_ids", group_ids), ("request_ids", request_ids)):
            if ids is not None and tuple(ids.shape) != (batch,):
                raise ValueError(f"{name} must have shape [{batch}], got {tuple(ids.shape)}")
        num_stratifiers = 0 if stratifiers is None else int(stratifiers.shape[1])
        kind = (num_tasks, num_stratifiers, group_ids is not None, request_ids is not None, oracle is not None)
        if self._num_tasks < 0:
            self._num_tasks, self._num_stratifiers = num_tasks, num_stratifiers
            self._has_groups, self._has_requests, self._has_oracle = kind[2:]
        elif kind != (self._num_tasks, self._num_stratifiers, self._has_groups, self._has_requests,
                      self._has_oracle):
            raise ValueError(
                "every update must pass the same inputs: first batch had "
                f"{self._num_tasks} tasks, {self._num_stratifiers} stratifiers, group_ids={self._has_groups}, "
                f"request_ids={self._has_requests}, oracle={self._has_oracle}; this one has {num_tasks} tasks, "
                f"{num_stratifiers} stratifiers, group_ids={group_ids is not None}, "
                f"request_ids={request_ids is not None}, oracle={oracle is not None}"
            )
        if weights is None:
            weights = torch.ones_like(predictions, dtype=torch.float32)
        self._gathered = None
        for name, tensor in (("predictions", predictions), ("labels", labels), ("weights", weights),
                             ("oracle", oracle)):
            if tensor is not None:
                self._chunks[name].append(tensor.detach().to(self._storage, torch.float32, copy=True))
        if stratifiers is not None:
            self._chunks["stratifiers"].append(stratifiers.detach().to(self._storage, torch.int64, copy=True))
        for name, ids in (("group_ids", group_ids), ("request_ids", request_ids)):
            if ids is not None:
                self._chunks[name].append(ids.detach().to(self._storage, torch.int64, copy=True))

    def compute(
        self,
        task_names: Sequence[str],
        stratifier_names: Sequence[str] = (),
        *,
        dataset: str | None = None,
        step: int | None = None,
        checkpoint: str | None = None,
        all_ranks: bool = False,
        ndcg_ks: Sequence[int] = (5, 10),
        score_weights: Sequence[float] | None = None,
        request_column: str | None = None,
    ) -> dict | None:
        """Collective: the metrics.json document on group rank 0 (every rank with all_ranks), None elsewhere. With
        request ids it holds the "ranking" block (core.ranking_metrics): NDCG@k for each of ndcg_ks, of the score
        Σ_t score_weights[t]·p_t (when given) and of each task alone, and each task's request AUC. Every row of a
        request is brought to one rank (gathered, or moved to its owner rank) before it is computed, so a request
        spread over ranks counts once, whole."""
        if self._sharded():
            return self._sharded_compute(task_names, stratifier_names, dataset, step, checkpoint, all_ranks, ndcg_ks,
                                         score_weights, request_column)
        data = self._gather(len(task_names), all_ranks)
        if data is None:
            return None
        stratifiers = data.get("stratifiers")
        if stratifiers is None and data["predictions"].shape[0] == 0:
            stratifiers = np.zeros((0, len(stratifier_names)), dtype=np.int64)
        tasks = compute_metrics(
            data["predictions"], data["labels"], data["weights"], task_names,
            stratifiers if stratifier_names else None, stratifier_names,
            data.get("group_ids"), data.get("oracle"),
        )
        document = metrics_document(tasks, dataset, step, checkpoint, stratifier_names)
        if "request_ids" in data:
            document["ranking"] = ranking_block(data["predictions"], data["labels"], data["weights"],
                                                data["request_ids"], task_names, ndcg_ks, score_weights,
                                                request_column)
        return document

    def curves(
        self,
        task_names: Sequence[str],
        num_points: int = 200,
        *,
        dataset: str | None = None,
        step: int | None = None,
        checkpoint: str | None = None,
        all_ranks: bool = False,
    ) -> dict | None:
        """Collective: the curves.json document on group rank 0 (every rank with all_ranks), None elsewhere."""
        if self._sharded():
            data, comm = self._agreed_local(len(task_names))
            tasks = sharded_curves(comm, data["predictions"], data["labels"], data["weights"], task_names,
                                   data.get("oracle"), num_points)
            if not (all_ranks or comm.rank == 0):
                return None
        else:
            data = self._gather(len(task_names), all_ranks)
            if data is None:
                return None
            tasks = compute_curves(data["predictions"], data["labels"], data["weights"], task_names,
                                   data.get("oracle"), num_points)
        header = {"dataset": dataset, "step": step, "checkpoint": None if checkpoint is None else str(checkpoint)}
        return curves_document(tasks, header)

    # --- sharded ---------------------------------------------------------------------------------------------------
    def _sharded(self) -> bool:
        if self._method != "auto":
            return self._method == "sharded"
        return dist.is_available() and dist.is_initialized() and dist.get_world_size(self._group) > 1

    def _agreed_local(self, num_tasks_hint: int) -> tuple[dict[str, np.ndarray], Collective]:
        """This rank's rows as numpy arrays, in the shapes every rank agrees on (collective)."""
        comm = Collective(self._group)
        meta = self._meta()
        metas = [m.tolist() for m in comm.gather(np.array([meta], dtype=np.int64))] if comm.active else [[meta]]
        agreed = _agree([m[0] for m in metas], num_tasks_hint)
        return {k: v.cpu().numpy() for k, v in self._local(*agreed).items()}, comm

    def _sharded_compute(self, task_names, stratifier_names, dataset, step, checkpoint, all_ranks, ndcg_ks,
                         score_weights, request_column) -> dict | None:
        data, comm = self._agreed_local(len(task_names))
        stratifiers = data.get("stratifiers")
        if stratifiers is None and stratifier_names and comm.sum([data["predictions"].shape[0]])[0] == 0:
            stratifiers = np.zeros((0, len(stratifier_names)), dtype=np.int64)
        tasks = sharded_metrics(comm, data["predictions"], data["labels"], data["weights"], task_names,
                                stratifiers if stratifier_names else None, stratifier_names, data.get("group_ids"),
                                data.get("oracle"))
        ranking = None
        if "request_ids" in data:
            ranking = sharded_ranking_block(comm, data["predictions"], data["labels"], data["weights"],
                                            data["request_ids"], task_names, ndcg_ks, score_weights, request_column)
        if not (all_ranks or comm.rank == 0):
            return None
        document = metrics_document(tasks, dataset, step, checkpoint, stratifier_names)
        if ranking is not None:
            document["ranking"] = ranking
        return document

    # --- gathering -------------------------------------------------------------------------------------------------
    def _meta(self) -> list[int]:
        return [self.num_rows, self._num_tasks, self._num_stratifiers,
                -1 if self._has_groups is None else int(self._has_groups),
                -1 if self._has_requests is None else int(self._has_requests),
                -1 if self._has_oracle is None else int(self._has_oracle)]

    def _local(self, num_tasks: int, num_stratifiers: int, has_groups: bool, has_requests: bool,
               has_oracle: bool) -> dict:
        """This rank's rows, concatenated; empty tensors of the agreed shapes when it saw none."""
        shapes = {"predictions": (num_tasks,), "labels": (num_tasks,), "weights": (num_tasks,),
                  "stratifiers": (num_stratifiers,), "group_ids": (), "request_ids": (), "oracle": (num_tasks,)}
        wanted = {"predictions", "labels", "weights"}
        wanted |= {"stratifiers"} if num_stratifiers > 0 else set()
        wanted |= {"group_ids"} if has_groups else set()
        wanted |= {"request_ids"} if has_requests else set()
        wanted |= {"oracle"} if has_oracle else set()
        out = {}
        for name in wanted:
            chunks = self._chunks[name]
            dtype = torch.float32 if name in _FLOAT_FIELDS else torch.int64
            out[name] = torch.cat(chunks) if chunks else torch.zeros((0, *shapes[name]), dtype=dtype)
        return out

    def _gather(self, num_tasks_hint: int, all_ranks: bool) -> dict[str, np.ndarray] | None:
        if self._gathered is not None and self._gathered[0] == all_ranks:
            return self._gathered[1]
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self._group) > 1
        meta = self._meta()
        if distributed:
            device = collective_device(self._group)
            world = dist.get_world_size(self._group)
            mine = torch.tensor(meta, dtype=torch.int64, device=device)
            metas_t = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(metas_t, mine, group=self._group)
            metas = [m.tolist() for m in metas_t]
        else:
            metas = [meta]
        num_tasks, num_stratifiers, has_groups, has_requests, has_oracle = _agree(metas, num_tasks_hint)
        local = self._local(num_tasks, num_stratifiers, has_groups, has_requests, has_oracle)
        if not distributed:
            result: dict[str, np.ndarray] | None = {k: v.cpu().numpy() for k, v in local.items()}
        else:
            rows = [m[0] for m in metas]
            is_destination = all_ranks or dist.get_rank(self._group) == 0
            result = {} if is_destination else None
            for name in sorted(local):
                gathered = _gather_rows(local[name], rows, all_ranks, self._group, device)
                if result is not None:
                    result[name] = gathered.numpy()
        self._gathered = (all_ranks, result)
        return result


def _agree(metas: list[list[int]], num_tasks_hint: int) -> tuple[int, int, bool, bool, bool]:
    """The input shapes every rank that saw a batch agrees on (ranks that saw none adopt them)."""
    seen = [m for m in metas if m[1] >= 0]
    if not seen:
        return num_tasks_hint, 0, False, False, False
    kinds = {tuple(m[1:]) for m in seen}
    if len(kinds) > 1:
        described = "; ".join(
            f"rank {r}: {m[1]} tasks, {m[2]} stratifiers, group_ids={bool(m[3])}, request_ids={bool(m[4])}, "
            f"oracle={bool(m[5])}"
            for r, m in enumerate(metas) if m[1] >= 0
        )
        raise ValueError(f"ranks passed different inputs to MetricsAccumulator.update ({described})")
    num_tasks, num_stratifiers, has_groups, has_requests, has_oracle = seen[0][1:]
    return num_tasks, num_stratifiers, bool(has_groups), bool(has_requests), bool(has_oracle)


def _gather_rows(
    tensor: torch.Tensor, rows: list[int], all_ranks: bool, group: dist.ProcessGroup | None, device: torch.device
) -> torch.Tensor:
    """Concatenate every rank's rows (rank order) on the destination rank(s); an empty tensor elsewhere."""
    # Never zero rows: some backends reject empty buffers; the padding is trimmed off below.
    longest = max(max(rows), 1)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    if all_ranks:
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded, group=group)
    else:
        destination = 0 if group is None else dist.get_global_rank(group, 0)
        is_destination = dist.get_rank(group) == 0
        parts = [torch.empty_like(padded) for _ in rows] if is_destination else None
        dist.gather(padded, parts, dst=destination, group=group)
        if not is_destination:
            return torch.zeros((0, *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([part[:n] for part, n in zip(parts, rows)]).cpu()
