"""The training data as the loop reads it: batches epoch after epoch from a source whose position a checkpoint can
record and restore (ResumableData), each drawn without moving the training's random generator, then moved to the
device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch


class ResumableData(Protocol):
    """Training batches with epochs and a position that can be saved and restored."""

    def __iter__(self) -> Iterator[Any]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Epochs:
    """`data` epoch after epoch, until `num_epochs` of them (None: without end). `epoch` is the epoch being read, and
    the number of epochs read once the data has ended."""

    def __init__(self, data: ResumableData, num_epochs: int | None, rank: int) -> None:
        self.data = data
        self.num_epochs = num_epochs
        self.rank = rank
        self.epoch = 0
        self._resumed = False  # the data's position was restored: its first epoch continues from there

    def position(self) -> tuple[int, dict]:
        """(epoch, data state) of the next batch: what a checkpoint records."""
        return self.epoch, self.data.state_dict()

    def restore(self, state: dict) -> None:
        """Continue `epoch` from a position a checkpoint recorded (the data's state)."""
        self.data.load_state_dict(state)
        self._resumed = True

    def batches(self) -> Iterator[Any]:
        """Every batch from the current position on; an epoch without a batch (other than a resumed one that had
        ended) is an error naming the epoch and the rank."""
        resumed = self._resumed
        while self.num_epochs is None or self.epoch < self.num_epochs:
            if not resumed:
                self.data.set_epoch(self.epoch)
            count = 0
            for batch in self.data:
                count += 1
                yield batch
            if count == 0 and not resumed:
                raise RuntimeError(f"the training data yields no batches in epoch {self.epoch} on rank {self.rank}")
            resumed = False
            self.epoch += 1


def next_batch(batches: Iterator[Any]) -> Any:
    """The next batch, None at the end, drawn without moving the global torch generator."""
    # Starting a DataLoader iterator draws from the global torch generator; keeping data loading out of the
    # training's random stream makes dropout masks independent of where a run was resumed.
    state = torch.get_rng_state()
    try:
        return next(batches, None)
    finally:
        torch.set_rng_state(state)


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch on `device` (copied asynchronously); on the CPU, or without a `to` method, the batch itself."""
    if device.type == "cpu" or not hasattr(batch, "to"):
        return batch
    return batch.to(device, non_blocking=True)
