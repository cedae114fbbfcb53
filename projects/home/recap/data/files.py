"""Finding parquet files (paths, directories, globs, URLs) and reading their footers: schemas and row-group sizes.

A directory written by `recap data prepare` (data/prepared.py) stands for its prepared files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.log import get_logger
from projects.home.recap.data import prepared
from projects.home.recap.data.errors import DataError

logger = get_logger(__name__)

_GLOB_CHARS = set("*?[")
# Errors pyarrow raises for unreadable or corrupt parquet files.
READ_ERRORS = (OSError, pa.ArrowException)


@dataclass
class ParquetSource:
    """One parquet file and its footer."""

    path: str
    filesystem: pafs.FileSystem
    metadata: pq.FileMetaData

    @property
    def schema(self) -> pa.Schema:
        return self.metadata.schema.to_arrow_schema()

    def open(self) -> pq.ParquetFile:
        """Open for reading row groups, reusing the footer read at scan time."""
        # pre_buffer coalesces a row group's column reads into few large ones: less CPU locally, fewer round trips
        # on object stores.
        return pq.ParquetFile(self.path, filesystem=self.filesystem, metadata=self.metadata, pre_buffer=True)


@dataclass
class ScannedDataset:
    """The files of a dataset and its row groups (the unit of work the reader splits across ranks and workers)."""

    paths: list[str]
    files: list[ParquetSource | prepared.PreparedSource]
    # One row per row group: (file index, row-group index, number of rows); only row groups with rows.
    units: np.ndarray
    skipped: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return int(self.units[:, 2].sum()) if len(self.units) else 0

    @property
    def prepared(self) -> bool:
        """Whether every file is a prepared one (data/prepared.py)."""
        return bool(self.files) and all(isinstance(f, prepared.PreparedSource) for f in self.files)

    def describe(self) -> str:
        return ", ".join(self.paths)


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


def resolve_paths(paths: list[str]) -> list[tuple[pafs.FileSystem, str]]:
    """Expand files, directories and globs (local or URL) into a sorted, de-duplicated list of parquet files (a
    prepared directory is listed as itself)."""
    return [(fs, path) for fs, path, _ in _resolve(paths)]


def _resolve(paths: list[str]) -> list[tuple[pafs.FileSystem, str, bool]]:
    """resolve_paths, saying which entries are prepared directories."""
    found: list[tuple[pafs.FileSystem, str, bool]] = []
    seen: set[str] = set()
    for raw in paths:
        fs, path = _filesystem_for(raw)
        if any(c in _GLOB_CHARS for c in path):
            matches = _expand_glob(fs, path)
            if not matches:
                raise DataError("the glob matches no file", raw)
            is_prepared = False
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError("no such file or directory", raw)
            is_prepared = info.type == pafs.FileType.Directory and prepared.is_prepared(fs, path)
            if info.type != pafs.FileType.Directory or is_prepared:
                matches = [path]
            else:
                matches = _list_directory(fs, path)
        for m in matches:
            if m not in seen:
                seen.add(m)
                found.append((fs, m, is_prepared))
    return found


def scan_dataset(paths: list[str], ignore_data_errors: bool = False) -> ScannedDataset:
    """Read every file's footer; a corrupt file is an error naming it, or with ignore_data_errors a warning."""
    files: list[ParquetSource | prepared.PreparedSource] = []
    skipped: list[str] = []
    for fs, path, is_prepared in _resolve(paths):
        if is_prepared:
            files += prepared.scan_prepared(fs, path)
            continue
        try:
            with fs.open_input_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
        except READ_ERRORS as exc:
            if not ignore_data_errors:
                raise DataError(f"not a readable parquet file ({exc}); set data.ignore_data_errors: true "
                                "to skip corrupt files", path) from None
            logger.warning("skipping corrupt parquet file %s: %s", path, exc)
            skipped.append(path)
            continue
        files.append(ParquetSource(path, fs, metadata))
    units = [
        (i, g, source.metadata.row_group(g).num_rows)
        for i, source in enumerate(files)
        for g in range(source.metadata.num_row_groups)
        if source.metadata.row_group(g).num_rows > 0
    ]
    table = np.array(units, dtype=np.int64).reshape(-1, 3)
    return ScannedDataset(list(paths), files, table, skipped)
