"""TensorBoard scalars from rank 0; other ranks get a writer that does nothing.

TensorBoard's writer appends to a local event file and cannot write to an object store without TensorFlow's
filesystem plugins. For a log_dir on a store (core/storage.py) the events are written to a local temporary directory
and its files are uploaded to the store whole (an object cannot be appended to) at each flush() and close(), and at
the first scalar after UPLOAD_EVERY_SECONDS: TensorBoard reads the same event files it would read locally, at most
one upload interval behind, and a crash loses at most that interval of curves (checkpoints do not depend on them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location
from core.storage_ops import upload_file
from core.storage_retries import StorageError

logger = get_logger(__name__)

UPLOAD_EVERY_SECONDS = 60.0


class MetricsWriter:
    """Writes scalars under `log_dir` (a directory or an object-store prefix) when enabled (rank 0). `purge_step`
    drops events at or after that step left by an earlier attempt of a resumed run, so curves do not fold back on
    themselves."""

    def __init__(self, log_dir: str | os.PathLike | ObjectPath, enabled: bool = True,
                 purge_step: int | None = None) -> None:
        self.log_dir = location(log_dir)
        self._writer = None
        self._staging: Path | None = None
        self._uploaded: dict[Path, int] = {}  # local event file -> bytes uploaded
        self._last_upload = time.monotonic()
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            if isinstance(self.log_dir, ObjectPath):
                self._staging = Path(tempfile.mkdtemp(prefix="recap-tensorboard-"))
                local = self._staging
            else:
                local = self.log_dir
                local.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(local), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One scalar per tag at `step`."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)
        if self._staging is not None and time.monotonic() - self._last_upload >= UPLOAD_EVERY_SECONDS:
            self.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._upload()

    def _upload(self) -> None:
        """Upload the event files that grew since their last upload (object-store log_dir only); a failure is
        logged, and those files are uploaded again next time."""
        if self._staging is None:
            return
        assert isinstance(self.log_dir, ObjectPath)
        self._last_upload = time.monotonic()
        for file in sorted(p for p in self._staging.rglob("*") if p.is_file()):
            size = file.stat().st_size
            if self._uploaded.get(file) != size:
                target = self.log_dir / file.relative_to(self._staging).as_posix()
                try:
                    upload_file(file, target)
                except StorageError as exc:  # a report: training goes on; the next upload tries again
                    logger.error("TensorBoard events not uploaded (%s)", exc)
                    return
                self._uploaded[file] = size

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            try:
                self._upload()
            finally:
                if self._staging is not None:
                    shutil.rmtree(self._staging, ignore_errors=True)
                    self._staging = None
