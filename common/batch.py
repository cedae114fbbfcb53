"""The batch: a small dataclass of tensors that moves, pins and stream-records itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    # torchrec's train pipelines take only Pipelineable batches; without torchrec (a dense-only install) a batch
    # is a plain class and holds no KeyedJaggedTensor.
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    from torchrec.streamable import Pipelineable

    _MOVABLE: tuple[type, ...] = (torch.Tensor, KeyedJaggedTensor)
except ImportError:
    Pipelineable = object
    _MOVABLE = (torch.Tensor,)


def _map(value: Any, fn) -> Any:
    if isinstance(value, _MOVABLE):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value  # pass-through payloads (ids) and None stay where they are


class DataclassBatch(Pipelineable):
    """Mixin for dataclass batches: every tensor / KeyedJaggedTensor field (also inside dicts) moves together."""

    def _apply(self, fn) -> DataclassBatch:
        return dataclasses.replace(
            self, **{f.name: _map(getattr(self, f.name), fn) for f in dataclasses.fields(self) if f.init}
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DataclassBatch:
        """A copy on `device`."""
        return self._apply(lambda t: t.to(device=torch.device(device), non_blocking=non_blocking))

    def pin_memory(self) -> DataclassBatch:
        """A copy in page-locked memory (for asynchronous host-to-GPU copies)."""
        return self._apply(lambda t: t.pin_memory())

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used on `stream` (torchrec's train pipelines call this)."""
        for f in dataclasses.fields(self):
            _map(getattr(self, f.name), lambda t: t.record_stream(stream))


@dataclass
class RecapBatch(DataclassBatch):
    """One batch of impressions.

    Columns of each kind are in the order the feature schema lists them; labels and weights are in the order of the
    model's tasks (the reader matches them to label columns by name).
    """

    continuous: torch.Tensor  # [B, C] float32, raw (may hold NaN/inf: featurization handles them)
    binary: torch.Tensor  # [B, Nb] float32 in {0, 1}
    discrete: torch.Tensor  # [B, D] int64
    sparse: KeyedJaggedTensor | None  # keys: the schema's sparse columns
    embeddings: torch.Tensor  # [B, sum of dense embedding dims] float32
    labels: torch.Tensor  # [B, T] float32 in {0, 1}
    weights: torch.Tensor  # [B, T] float32: downsampling weights times the row weight column
    # Pass-through columns for predictions (any type, strings included); never moved to a device.
    ids: dict[str, Any] = field(default_factory=dict)
    # [B, T] true probabilities when the data carries them (synthetic data's oracle.<label> columns), else None.
    oracle: torch.Tensor | None = None
    # Engagement histories by group, jagged: "lengths" [B] int64 (items per row, at most the group's max_length),
    # the rows' items one after another, most recent first ("id:<column>" [N] int64, "actions" [N] int64,
    # "continuous" [N, C] float32), and "candidate:<column>" [B] int64, the candidate's id for each id column.
    sequences: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]
