"""The few collectives the sharded evaluation (core/sharded_metrics.py, core/sharded_curves.py,
core/sharded_ranking.py) uses, on numpy arrays: sums and maxima over ranks, an all_gather of small arrays of any
length, and an all_to_all that sends each row to the rank it names. Without a process group of more than one rank
each is the identity.

Collectives run on the CPU for gloo and on the current CUDA device for NCCL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Collective", "collective_device"]


def collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where collectives on `group` take their tensors."""
    # NCCL only moves CUDA tensors; gloo (alone or beside NCCL) takes CPU tensors.
    backend = str(dist.get_backend(group)).lower()
    if "gloo" not in backend and "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Collective:
    """The few collectives the sharded metrics use, on numpy arrays; without a process group of more than one rank
    each is the identity (one rank holds every row)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
        self.world = dist.get_world_size(group) if self.active else 1
        self.rank = dist.get_rank(group) if self.active else 0
        self.device = collective_device(group) if self.active else torch.device("cpu")

    def _reduce(self, array: Any, op: Any) -> np.ndarray:
        array = np.ascontiguousarray(array, dtype=np.float64)
        if not self.active:
            return array
        tensor = torch.from_numpy(array.copy()).to(self.device)
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.cpu().numpy()

    def sum(self, array: Any) -> np.ndarray:
        """Element-wise sum over ranks (float64)."""
        return self._reduce(array, dist.ReduceOp.SUM)

    def max(self, array: Any) -> np.ndarray:
        """Element-wise maximum over ranks (float64)."""
        return self._reduce(array, dist.ReduceOp.MAX)

    def gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (any length along the first axis, same trailing shape and dtype), in rank order.
        For small arrays only: every rank receives all of them."""
        array = np.ascontiguousarray(array)
        if not self.active:
            return [array]
        length = torch.tensor([array.shape[0]], dtype=torch.int64, device=self.device)
        lengths = [torch.empty_like(length) for _ in range(self.world)]
        dist.all_gather(lengths, length, group=self.group)
        counts = [int(n.item()) for n in lengths]
        padded = np.zeros((max(max(counts), 1), *array.shape[1:]), dtype=array.dtype)
        padded[: array.shape[0]] = array
        mine = torch.from_numpy(padded).to(self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        return [part[:n].cpu().numpy() for part, n in zip(parts, counts)]

    def exchange(self, destination: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Send row i of every array to rank destination[i] (all_to_all); returns the rows this rank received, rank
        by rank in the senders' order."""
        if not self.active:
            return [np.asarray(a) for a in arrays]
        order = np.argsort(destination, kind="stable")
        send = np.bincount(destination, minlength=self.world).astype(np.int64)
        received = torch.empty(self.world, dtype=torch.int64, device=self.device)
        dist.all_to_all_single(received, torch.from_numpy(send).to(self.device), group=self.group)
        receive = received.cpu().tolist()
        out = []
        for array in arrays:
            source = torch.from_numpy(np.ascontiguousarray(array[order])).to(self.device)
            target = torch.empty((sum(receive), *array.shape[1:]), dtype=source.dtype, device=self.device)
            dist.all_to_all_single(target, source, receive, send.tolist(), group=self.group)
            out.append(target.cpu().numpy())
            del source, target
        return out
