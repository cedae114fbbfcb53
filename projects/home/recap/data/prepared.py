"""The prepared layout: a dataset rewritten by `recap data prepare` for fast reading, and how the loader reads it.

A prepared directory holds one Arrow IPC file per source parquet file (`part-00000.arrow`, ...), one record batch per
source row group, and a manifest (`_recap_prepared.json`). Every configured column is stored already converted the way
the loader converts it (`to_arrays`): continuous values as float32 with nulls as NaN, binary and embeddings as float32
with nulls as 0, discrete as int64 with nulls as 0 (id 0), labels, weights and oracles as float32; fixed-length columns
as fixed_size_list, so reading a batch is memory-mapping the file and viewing its buffers as numpy arrays (no decoding,
no copy). Sparse and id columns are stored as read. Files, row groups and row counts equal the source's, so every
rank, worker, shuffle and resume position sees the same rows as on the source: batches are equal.

A prepared directory is used wherever a parquet directory is (data.train.paths, validation sets, stats): the manifest
is how it is recognised; it also lists the source's files (a file added or removed makes the copy stale) and a CRC-32
per column of each record batch, verified the first time a process reads it. Writing one is
`projects/home/recap/commands/data_prepare.py`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import torch

from core.log import get_logger
from projects.home.recap.data import columns
from projects.home.recap.data.columns import (
    ArrayBlock,
    stack_columns,
)
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.layout import BatchLayout, ColumnRole
from projects.home.recap.data.paths import resolve

logger = get_logger(__name__)

MANIFEST = "_recap_prepared.json"
# Written after every finished file while `prepare` runs, removed when MANIFEST is written: its presence alone means
# an interrupted prepare (run it again to finish).
PARTIAL_MANIFEST = "_recap_prepared.partial.json"
FORMAT = "recap-prepared"
# 2: the manifest lists the source's files and a CRC-32 per column of each record batch.
VERSION = 2

# Batch part -> (stored dtype, value of a null) as to_arrays converts it; None: stored as read. Labels and weights
# cannot be null (the loader's value checks reject them), so their fill is never used.
CONVERSIONS: dict[str, tuple[str, float] | None] = {
    "continuous": ("float32", math.nan),
    "binary": ("float32", 0.0),
    "discrete": ("int64", 0),
    "embeddings": ("float32", 0.0),
    "label": ("float32", math.nan),
    "weight": ("float32", math.nan),
    "oracle": ("float32", math.nan),
    "sparse": None,
    "id": None,
    "sequence_id": None,
    "sequence_action": None,
    "sequence_continuous": None,
    "candidate": None,
}


def _describe(conversion: tuple[str, float] | None) -> str:
    return "as read" if conversion is None else f"{conversion[0]}, nulls as {conversion[1]}"


def column_plan(layout: BatchLayout) -> dict[str, dict[str, Any]]:
    """{column: how it is stored} for every column the layout reads; a column two roles would convert differently
    (say continuous and binary) is an error naming both."""
    plan: dict[str, dict[str, Any]] = {}
    for role in layout.roles():
        conversion = CONVERSIONS[role.kind]
        entry = {"kind": role.kind, "length": role.length, "dtype": None if conversion is None else conversion[0],
                 "fill": None if conversion is None else _json_float(conversion[1])}
        seen = plan.get(role.name)
        if seen is not None and (seen["dtype"], seen["fill"]) != (entry["dtype"], entry["fill"]):
            raise DataError(f"configured as {seen['kind']} and as {role.kind} ({role.key}), which convert it "
                            "differently: a prepared dataset stores one form of each column", None, role.name)
        plan.setdefault(role.name, entry)
    return plan


def _json_float(value: float) -> float | str:
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def convert_column(table: pa.Table, role: ColumnRole) -> pa.Array:
    """The column as the prepared layout stores it: to_arrays' conversion done once (same code, same values)."""
    column = table.column(role.name)
    conversion = CONVERSIONS[role.kind]
    if conversion is None:
        return column.combine_chunks()
    dtype, fill = conversion
    matrix = stack_columns(table, (role,), np.dtype(dtype), fill)
    values = pa.array(matrix.reshape(-1))
    return values if role.length is None else pa.FixedSizeListArray.from_arrays(values, role.length)


def check_layout(layout: BatchLayout, files: list[Any]) -> None:
    """Raise DataError (file, column) where a configured column was prepared in another form than this config reads
    it in (the dataset was prepared with another config: prepare it again)."""
    for source in files:
        if not isinstance(source, PreparedSource):
            continue
        for role in layout.roles():
            stored = source.columns.get(role.name)
            wanted = CONVERSIONS[role.kind]
            if stored is None or stored["dtype"] is None:
                continue  # stored as read: the loader converts it as it does parquet
            if wanted is None or (stored["dtype"], stored["fill"]) != (wanted[0], _json_float(wanted[1])):
                raise DataError(f"prepared as {stored['kind']} ({stored['dtype']}, nulls as {stored['fill']}) but "
                                f"configured as {role.kind} ({role.key}: {_describe(wanted)}); run `recap data "
                                "prepare` again with this config", source.path, role.name)


def column_checksums(batch: pa.RecordBatch) -> list[int]:
    """CRC-32 of each column's buffers in a record batch as read back from its file: what the manifest records and
    reading verifies, so a damaged block of a file (same size, other bytes) is an error instead of other values."""
    out = []
    for column in batch.columns:
        crc = 0
        for buffer in column.buffers():
            if buffer is not None:
                crc = zlib.crc32(buffer, crc)
        out.append(crc)
    return out


# --- reading ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RowGroup:
    num_rows: int


@dataclass(frozen=True)
class PreparedMetadata:
    """The part of parquet's FileMetaData the readers use: row counts per record batch."""

    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)

    @property
    def num_row_groups(self) -> int:
        return len(self.row_groups)

    def row_group(self, index: int) -> _RowGroup:
        return _RowGroup(self.row_groups[index])


class PreparedFile:
    """An open prepared file, read like a pq.ParquetFile: a row group is a record batch, memory-mapped."""

    def __init__(self, source: PreparedSource):
        self.source = source
        if isinstance(source.filesystem, pafs.LocalFileSystem):
            handle = pa.memory_map(source.path)
        else:
            handle = source.filesystem.open_input_file(source.path)
        self._reader = ipc.open_file(handle)
        self.schema_arrow = self._reader.schema
        self.num_record_batches = self._reader.num_record_batches

    def read_row_group(self, index: int, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
        """Record batch `index` (only `columns`), zero-copy; each column's checksum is verified the first time this
        handle reads it."""
        batch = self._reader.get_batch(index)
        expected = self.source.metadata.row_groups[index]
        if batch.num_rows != expected:
            raise DataError(f"record batch {index} has {batch.num_rows} rows, the manifest says {expected}: the "
                            "prepared file was modified; run `recap data prepare` again", self.source.path)
        if columns is not None:
            batch = batch.select(columns)
        self._verify(index, batch)
        return pa.Table.from_batches([batch])

    def _verify(self, index: int, batch: pa.RecordBatch) -> None:
        # Once per source, record batch and column in a process: an epoch after the first reads the same bytes
        # again (readers reopen files, the source stays), so the checksums cost one pass over the data per process.
        verified = self.source.verified
        recorded = self.source.checksums[index]
        names = self.schema_arrow.names
        todo = [(name, column) for name, column in zip(batch.schema.names, batch.columns)
                if (index, name) not in verified]
        if not todo:
            return
        found = column_checksums(pa.RecordBatch.from_arrays([c for _, c in todo], names=[n for n, _ in todo]))
        for (name, _), crc in zip(todo, found):
            if crc != recorded[names.index(name)]:
                raise DataError(f"record batch {index} does not match its checksum in the manifest: the prepared "
                                "file is damaged; remove it and run `recap data prepare` again", self.source.path,
                                name)
            verified.add((index, name))

    def read(self, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
        """Every record batch (only `columns`)."""
        tables = [self.read_row_group(i, columns) for i in range(self.num_record_batches)]
        if tables:
            return pa.concat_tables(tables)
        schema = self.schema_arrow if columns is None else pa.schema([self.schema_arrow.field(c) for c in columns])
        return schema.empty_table()


@dataclass
class PreparedSource:
    """One prepared file and its manifest entry; used where a ParquetSource is (path, schema, metadata, open)."""

    path: str
    filesystem: pafs.FileSystem
    metadata: PreparedMetadata
    schema: pa.Schema
    columns: dict[str, dict[str, Any]]
    # Per record batch, the CRC-32 of each column in the file's schema order (column_checksums).
    checksums: list[list[int]] = field(default_factory=list)
    # (record batch, column) pairs whose checksum this process has verified.
    verified: set[tuple[int, str]] = field(default_factory=set, compare=False, repr=False)

    def open(self) -> PreparedFile:
        return PreparedFile(self)


def is_prepared(fs: pafs.FileSystem, directory: str) -> bool:
    """Whether a directory is a prepared dataset, finished or not."""
    infos = fs.get_file_info([f"{directory}/{MANIFEST}", f"{directory}/{PARTIAL_MANIFEST}"])
    return any(i.type == pafs.FileType.File for i in infos)


def read_manifest(fs: pafs.FileSystem, path: str, any_version: bool = False) -> dict:
    """A manifest's contents; an unreadable one (or, unless any_version, one of another version) is a DataError
    naming it."""
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read().decode())
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataError(f"unreadable prepared-dataset manifest ({exc})", path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} manifest", path)
    if not any_version and manifest.get("version") != VERSION:
        raise DataError(f"not a {FORMAT} manifest of version {VERSION} (format {manifest.get('format')!r}, version "
                        f"{manifest.get('version')!r}); run `recap data prepare` again", path)
    return manifest


def source_changed(entry: dict) -> str | None:
    """Why a prepared file's local source no longer matches what was prepared (None: unchanged, gone or remote)."""
    recorded = entry["source"]
    if recorded["mtime_ns"] is None:
        return None  # a remote source: not checked (a stat per file would be a request per file)
    try:
        stat = os.stat(recorded["path"])
    except OSError:
        return None  # the source may be deleted (or remote) once prepared
    if stat.st_size != recorded["bytes"] or stat.st_mtime_ns != recorded["mtime_ns"]:
        return (f"its source {recorded['path']} changed since it was prepared (size {recorded['bytes']} -> "
                f"{stat.st_size}, mtime {recorded['mtime_ns']} -> {stat.st_mtime_ns})")
    return None


def source_files_changed(manifest: dict) -> str | None:
    """Which files a local source gained or lost since it was prepared (None: the same, or a source that is remote
    or gone: a prepared copy may outlive its source)."""
    paths = manifest["source_paths"]
    if any("://" in p or not os.path.exists(p) for p in paths):
        return None
    now = {path for _, path, _ in resolve(paths, is_prepared)}
    then = set(manifest["source_files"])
    added, removed = sorted(now - then), sorted(then - now)
    if not added and not removed:
        return None

    def listed(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = ([f"{len(added)} file(s) added ({listed(added)})"] if added else []) + (
        [f"{len(removed)} file(s) removed ({listed(removed)})"] if removed else [])
    return f"its source {', '.join(paths)} has {' and '.join(parts)} since it was prepared"


def scan_prepared(fs: pafs.FileSystem, directory: str) -> list[PreparedSource]:
    """The files of a prepared directory, checked against its manifest: an interrupted prepare, a missing or
    truncated file, or a source that changed (a file changed, added or removed) since is a DataError saying so."""
    manifest_path = f"{directory}/{MANIFEST}"
    if fs.get_file_info(manifest_path).type != pafs.FileType.File:
        partial = read_manifest(fs, f"{directory}/{PARTIAL_MANIFEST}")
        raise DataError(f"partially prepared ({len(partial['files'])} of {partial['num_source_files']} files "
                        "written): run `recap data prepare` again to finish it", directory)
    manifest = read_manifest(fs, manifest_path)
    changed = source_files_changed(manifest)
    if changed:
        raise DataError(f"stale prepared dataset: {changed}; run `recap data prepare` again", directory)
    sources = []
    nulls = []
    for entry in manifest["files"]:
        path = f"{directory}/{entry['name']}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File or info.size != entry["bytes"]:
            found = "missing" if info.type != pafs.FileType.File else f"{info.size} bytes"
            raise DataError(f"prepared file is {found}, the manifest says {entry['bytes']} bytes: the prepared "
                            "directory is incomplete or was modified; run `recap data prepare` again", path)
        changed = source_changed(entry)
        if changed:
            raise DataError(f"stale prepared file: {changed}; run `recap data prepare` again", path)
        source = PreparedSource(path, fs, PreparedMetadata(tuple(entry["row_groups"])), pa.schema([]),
                                manifest["columns"], entry["checksums"])
        try:
            handle = source.open()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"unreadable prepared file ({exc}); run `recap data prepare` again", path) from None
        if handle.num_record_batches != len(entry["row_groups"]):
            raise DataError(f"{handle.num_record_batches} record batches, the manifest says "
                            f"{len(entry['row_groups'])}; run `recap data prepare` again", path)
        source.schema = handle.schema_arrow
        sources.append(source)
        nulls += [(entry["source"]["path"], column, count) for column, count in entry["null_discrete"].items()]
    for source_path, column, count in nulls:
        logger.warning("%s: %d null values in discrete column %s were read as id 0 when it was prepared (%s)",
                       source_path, count, column, directory)
    return sources


# --- batches ---------------------------------------------------------------------------------------------------------
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def _empty(shape: tuple[int, ...], dtype: np.dtype, shared: bool) -> tuple[np.ndarray, torch.Tensor]:
    """An output tensor (and its numpy view). In-process, a large one is asked for transparent huge pages: a fill's
    output is fresh memory, and faulting it in 4 KB pages costs more than copying the rows into it."""
    tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype)
    if shared and tensor.numel():
        tensor.share_memory_()
    elif _MADVISE is not None and tensor.numel() * tensor.element_size() >= 2 * _HUGE_PAGE:
        start = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        stop = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // _HUGE_PAGE * _HUGE_PAGE
        _MADVISE(start, stop - start, _MADV_HUGEPAGE)  # advice only: a kernel without THP ignores it
    return tensor.numpy(), tensor


def assemble(blocks: list[ArrayBlock], rows: np.ndarray, batch_size: int, shared: bool) -> dict:
    """columns.assemble for blocks read from a prepared dataset (same tensors, same values): the dense parts are
    gathered straight from the memory-mapped record batches into outputs on huge pages."""
    return columns.assemble(blocks, rows, batch_size, shared, empty=_empty)
