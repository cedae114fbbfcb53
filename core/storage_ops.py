"""File and directory operations that differ between a disk and an object store, each dispatching on the path's type
(pathlib.Path or core.object_path.ObjectPath): atomic replacement, removing and moving a tree, uploads and downloads,
and `staged_output`, the local directory a command writes into before its output goes to a store whole.

Object stores have no rename and no directories: a key is visible once its single PUT completes, whole. Writers
therefore write small files with one PUT (`write_atomic`), mark a group of files complete by writing a marker last
(checkpoints), and upload a directory built locally only once it is finished (`staged_output`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location
from core.storage_retries import StorageError

logger = get_logger(__name__)


def write_atomic(path: Path | ObjectPath, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new content, never a part: on a disk a
    synced temporary file renamed over it, on an object store one PUT."""
    if isinstance(path, ObjectPath):
        path.write_bytes(data)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rmtree(path: Path | ObjectPath, ignore_errors: bool = False) -> None:
    """Remove a directory or every key under a prefix."""
    if isinstance(path, ObjectPath):
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.fs.rm(path.key, recursive=True)
            path.fs.invalidate_cache(path.key)

        try:
            path._call("deleting", remove)
        except StorageError:
            if not ignore_errors:
                raise
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)


def move_tree(source: Path | ObjectPath, target: Path | ObjectPath) -> None:
    """Rename a directory; on an object store, copy every key under the prefix and delete the originals."""
    if isinstance(source, ObjectPath):
        assert isinstance(target, ObjectPath), "a prefix on a store moves within the store"

        def move() -> None:
            fs = source.fs
            fs.invalidate_cache(source.key)
            keys = fs.find(source.key)
            for key in keys:  # server-side copies, then the originals go
                fs.copy(key, target.key + key[len(source.key):])
            if keys:
                fs.rm(keys)
            fs.invalidate_cache(source.key)
            fs.invalidate_cache(target.key)

        source._call("moving", move)
        return
    assert isinstance(target, Path), "a local directory moves to a local path"
    os.rename(source, target)


def upload_file(source: Path, target: ObjectPath) -> None:
    """Copy one local file to the store."""
    target._call("uploading", lambda: target.fs.put_file(str(source), target.key))


def upload_tree(source: Path, target: ObjectPath) -> int:
    """Copy every file under the local directory `source` to the prefix `target` (same relative names); returns
    the number of files."""
    count = 0
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        upload_file(file, target / file.relative_to(source).as_posix())
        count += 1
    return count


def download_tree(source: ObjectPath, target: Path) -> int:
    """Copy every key under the prefix `source` into the local directory `target`; returns the number of files."""
    fs = source.fs
    fs.invalidate_cache(source.key)
    keys = source._call("listing", lambda: fs.find(source.key))
    for key in keys:
        local = target / key[len(source.key):].lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        source._call("downloading", functools.partial(fs.get_file, key, str(local)))
    return len(keys)


@contextlib.contextmanager
def staged_output(output: str | os.PathLike | Path | ObjectPath) -> Iterator[Path]:
    """A local directory to write an output directory into. For a local output, the output itself; for an
    object-store prefix, a temporary directory uploaded there when the block ends without an error (then
    deleted), so a failed command leaves no partial output on the store."""
    target = location(output)
    if isinstance(target, Path):
        yield target
        return
    staging = Path(tempfile.mkdtemp(prefix="recap-out-"))
    try:
        yield staging
        files = upload_tree(staging, target)
        logger.info("uploaded %d file(s) to %s", files, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
