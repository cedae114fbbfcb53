"""One run per save_dir: an exclusive lock on SAVE_DIR/.lock, held by rank 0 for the whole run.

On a disk the lock is an flock on an open file: the operating system releases it when the process ends, however it
ends, so a crashed or killed run never leaves a stale lock behind. The file records the holder (host, pid, start time)
for the error the next run gets.

On an object store (save_dir s3://..., gs://...) nothing is released when a process dies, so the lock is a lease: the
object SAVE_DIR/.lock records the holder (host, pid, start time, a token) and an expiry LEASE_SECONDS ahead, which a
thread of rank 0 renews every RENEW_SECONDS. A second run finds an unexpired lease and stops with the same error as on
a disk; a lease left by a killed run is taken over once it has expired. Writes are conditional where the store
supports it (S3: If-None-Match for a new lease, If-Match on the previous one's ETag to renew or take over), and the
lease is read back after every write, so of two runs racing for it exactly one keeps it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location
from core.storage_retries import StorageError

logger = get_logger(__name__)

LOCK_FILE = ".lock"
# An object-store lease lasts LEASE_SECONDS from its last renewal; rank 0 renews it every RENEW_SECONDS.
LEASE_SECONDS = 120.0
RENEW_SECONDS = 30.0


class RunLockedError(RuntimeError):
    """Another process holds the save_dir's lock."""


def _in_use(save_dir: Any, described: str) -> RunLockedError:
    return RunLockedError(
        f"{save_dir} is in use by another run ({described}): two runs writing one save_dir would "
        "overwrite each other's checkpoints; wait for it to end or choose another training.save_dir"
    )


def RunLock(save_dir: str | os.PathLike | ObjectPath) -> FileLock | LeaseLock:  # noqa: N802 (a factory)
    """The save_dir's lock: an flock on a disk, a lease on an object store."""
    directory = location(save_dir)
    return LeaseLock(directory) if isinstance(directory, ObjectPath) else FileLock(directory)


class FileLock:
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
            raise _in_use(self.path.parent, described) from None
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


class LeaseLock:
    """The object-store lock (see the module docstring): `acquire()` takes the lease or raises RunLockedError,
    then a daemon thread renews it until `release()` deletes it."""

    def __init__(self, save_dir: ObjectPath, lease_seconds: float | None = None,
                 renew_seconds: float | None = None) -> None:
        self.path = save_dir / LOCK_FILE
        self.lease_seconds = LEASE_SECONDS if lease_seconds is None else lease_seconds
        self.renew_seconds = RENEW_SECONDS if renew_seconds is None else renew_seconds
        self.token = uuid.uuid4().hex
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "token": self.token}
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[dict[str, Any], str | None] | None:
        """The lease on the store and its ETag, None when there is none."""
        fs = self.path.fs
        try:
            data = self.path.read_bytes()
            etag = self.path._call("reading", lambda: fs.info(self.path.key, refresh=True).get("ETag"))
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), etag

    def _write(self, previous_etag: str | None, exists: bool) -> bool:
        """Write our lease, conditionally on the lease being absent (not exists) or unchanged (previous_etag);
        True when the lease read back afterwards is ours."""
        record = {**self.record, "expires": time.time() + self.lease_seconds,
                  "expires_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + self.lease_seconds))}
        data = json.dumps(record).encode()
        fs = self.path.fs
        condition: dict[str, Any] = {}
        if self.path.scheme == "s3":
            condition = {"IfMatch": previous_etag} if exists and previous_etag else {"mode": "create"}

        def put() -> bool:
            try:
                fs.pipe_file(self.path.key, data, **condition)
            except FileExistsError:
                return False
            except OSError as exc:
                if "precondition" in str(exc).lower():
                    return False
                raise
            return True

        if not self.path._call("writing the lease", put):
            return False
        current = self._read()
        if current is None or current[0].get("token") != self.token:
            return False
        self._etag = current[1]
        return True

    def acquire(self) -> None:
        current = self._read()
        if current is not None:
            record, etag = current
            if float(record.get("expires", 0)) > time.time():
                raise _in_use(self.path.parent, self._describe(record))
            logger.warning("%s: taking over the lease of pid %s on %s, expired at %s", self.path, record.get("pid"),
                           record.get("host"), record.get("expires_at"))
        if not self._write(current[1] if current else None, exists=current is not None):
            now = self._read()
            raise _in_use(self.path.parent, self._describe(now[0] if now else {}))
        self._thread = threading.Thread(target=self._renew, name="save_dir-lease", daemon=True)
        self._thread.start()

    @staticmethod
    def _describe(record: dict[str, Any]) -> str:
        return (f"pid {record.get('pid')} on {record.get('host')}, since {record.get('started')}; its lease on the "
                f"object store expires at {record.get('expires_at')} unless renewed")

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                if not self._write(self._etag, exists=True):
                    logger.error("%s: the lease was taken by another run; this run no longer holds the save_dir",
                                 self.path)
                    return
            except StorageError as exc:
                logger.error("%s: renewing the lease failed (%s); it expires %.0f s after the last renewal",
                             self.path, exc, self.lease_seconds)

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            current = self._read()
            if current is not None and current[0].get("token") == self.token:
                self.path.unlink(missing_ok=True)
        except (StorageError, OSError) as exc:
            logger.error("%s: the lease was not deleted (%s); it expires on its own", self.path, exc)
