"""Group ids for the evaluation's grouped metrics (grouped AUC's users, the ranking metrics' requests): a scalar
discrete column, or an id column whose values become int64 ids (integers as they are, anything else by a 64-bit hash
of its text that every process computes alike)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from common.batch import RecapBatch


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
