"""Finding parquet files (paths, directories, globs, URLs) and reading their footers: schemas and row-group sizes.

A directory written by `recap data prepare` (data/prepared.py) stands for its prepared files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.log import get_logger
from projects.home.recap.data import prepared
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.paths import resolve

logger = get_logger(__name__)

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


def resolve_paths(paths: list[str]) -> list[tuple[pafs.FileSystem, str]]:
    """Expand files, directories and globs (local or URL) into a sorted, de-duplicated list of parquet files (a
    prepared directory is listed as itself)."""
    return [(fs, path) for fs, path, _ in resolve(paths, prepared.is_prepared)]


def scan_dataset(paths: list[str], ignore_data_errors: bool = False) -> ScannedDataset:
    """Read every file's footer; a corrupt file is an error naming it, or with ignore_data_errors a warning."""
    files: list[ParquetSource | prepared.PreparedSource] = []
    skipped: list[str] = []
    for fs, path, is_prepared in resolve(paths, prepared.is_prepared):
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
