"""One run per save_dir: an exclusive lock on SAVE_DIR/.lock, held by rank 0 for the whole run.

The lock is an flock on an open file: the operating system releases it when the process ends, however it ends, so a
crashed or killed run never leaves a stale lock behind. The file records the holder (host, pid, start time) for the
error the next run gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the save_dir's lock."""


class RunLock:
    """Take with `acquire()` (RunLockedError if held elsewhere), give back with `release()` or at process exit."""

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.path = Path(save_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "{}"
            os.close(fd)
            try:
                who = json.loads(holder)
                described = f"pid {who.get('pid')} on {who.get('host')}, since {who.get('started')}"
            except json.JSONDecodeError:
                described = holder
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({described}): two runs writing one save_dir would "
                "overwrite each other's checkpoints; wait for it to end or choose another training.save_dir"
            ) from None
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
