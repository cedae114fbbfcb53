"""TensorBoard scalars from rank 0; other ranks get a writer that does nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class MetricsWriter:
    """Writes scalars under `log_dir` when enabled (rank 0). `purge_step` drops events at or after that step left
    by an earlier attempt of a resumed run, so curves do not fold back on themselves."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One scalar per tag at `step`."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
