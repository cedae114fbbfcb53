"""Resolving data paths (files, directories, globs, local or URL) into the files they name.

A directory that stands for its own files (a prepared one, data/prepared.py) is kept whole: the caller says which
directories those are, so this module knows nothing of prepared data and both files.py and prepared.py can use it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from projects.home.recap.data.errors import DataError

_GLOB_CHARS = set("*?[")

# (filesystem, directory) -> whether the directory is one unit, listed as itself.
UnitDirectory = Callable[[pafs.FileSystem, str], bool]


def _never(fs: pafs.FileSystem, path: str) -> bool:
    return False


def _filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowException, ValueError):
        pass
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem
    except ImportError:
        raise DataError("no filesystem for this URL (install fsspec or use a scheme pyarrow knows)", path) from None
    fs, inner = fsspec.core.url_to_fs(path)
    return PyFileSystem(FSSpecHandler(fs)), inner


def _expand_glob(fs: pafs.FileSystem, pattern: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        return sorted(glob.glob(pattern, recursive=True))
    import fnmatch

    base = pattern
    while any(c in _GLOB_CHARS for c in base):
        base = base.rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern))


def _list_directory(fs: pafs.FileSystem, directory: str) -> list[str]:
    # pyarrow.dataset's discovery: recursive, skipping hidden and "_"-prefixed files (_SUCCESS, .crc, ...). The
    # empty schema stops it from opening a file here: footers are read (and corrupt files reported) by scan_dataset.
    dataset = ds.dataset(directory, filesystem=fs, format="parquet", schema=pa.schema([]))
    return sorted(dataset.files)


def resolve(paths: list[str], is_unit: UnitDirectory = _never) -> list[tuple[pafs.FileSystem, str, bool]]:
    """Expand files, directories and globs (local or URL) into a sorted, de-duplicated list of parquet files, each
    with whether it is a directory that `is_unit` keeps whole (listed as itself)."""
    found: list[tuple[pafs.FileSystem, str, bool]] = []
    seen: set[str] = set()
    for raw in paths:
        fs, path = _filesystem_for(raw)
        if any(c in _GLOB_CHARS for c in path):
            matches = _expand_glob(fs, path)
            if not matches:
                raise DataError("the glob matches no file", raw)
            unit = False
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError("no such file or directory", raw)
            unit = info.type == pafs.FileType.Directory and is_unit(fs, path)
            if info.type != pafs.FileType.Directory or unit:
                matches = [path]
            else:
                matches = _list_directory(fs, path)
        for m in matches:
            if m not in seen:
                seen.add(m)
                found.append((fs, m, unit))
    return found
