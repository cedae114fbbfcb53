"""Rewriting a parquet dataset in the prepared layout (data/prepared.py): `prepare`, the job behind `recap data
prepare` (commands/data_prepare.py) and the benchmarks that read prepared data.

The configured columns of every source file are checked as the loader checks them (missing or mistyped columns,
labels, fixed list lengths, null weights or ids) and converted once, a row group at a time (memory: one row group),
into DST/part-NNNNN.arrow. Each file is written under a temporary name and renamed when complete, and the progress is
kept in DST/_recap_prepared.partial.json: an interrupted run, started again with the same arguments, keeps the files
already written. The manifest DST/_recap_prepared.json, written last, is what makes DST a dataset. Preparing again a
destination whose source changed since (files changed, added or removed) rewrites what changed; a destination holding
another source's or config's dataset is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from core.log import get_logger
from core.progress import Progress
from projects.home.recap.data import prepared
from projects.home.recap.data.columns import check_values, null_discrete_counts
from projects.home.recap.data.config import DataConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import READ_ERRORS, ParquetSource, scan_dataset
from projects.home.recap.data.layout import BatchLayout, build_layout
from projects.home.recap.data.validation import detect_oracle, validate_scanned

logger = get_logger(__name__)


def _source_identity(source: ParquetSource) -> dict[str, Any]:
    """What says a source is the one that was prepared: path, size, modification time."""
    if isinstance(source.filesystem, pafs.LocalFileSystem):
        stat = os.stat(source.path)
        return {"path": source.path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"path": source.path, "bytes": source.filesystem.get_file_info(source.path).size, "mtime_ns": None}


def _write_json(path: Path, doc: dict) -> None:
    """Write atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _prepare_file(layout: BatchLayout, source: ParquetSource, target: Path, ignore_data_errors: bool,
                  compression: str | None, progress: Progress) -> dict[str, Any]:
    """Convert one source file into `target` (via a temporary name); its manifest entry."""
    handle = source.open()
    names = set(handle.schema_arrow.names)
    roles = [r for r in dict((r.name, r) for r in layout.roles()).values() if r.name in names]
    columns = [r.name for r in roles]

    def convert(table: pa.Table) -> pa.RecordBatch:
        arrays = [prepared.convert_column(table, role) for role in roles]
        return pa.RecordBatch.from_arrays(arrays, names=columns)

    schema = convert(handle.schema_arrow.empty_table().select(columns)).schema
    tmp = target.with_name(f".{target.name}.tmp")
    row_groups: list[int] = []
    nulls: dict[str, int] = {}
    dropped = 0
    options = ipc.IpcWriteOptions(compression=compression)
    with ipc.new_file(str(tmp), schema, options=options) as writer:
        for group in range(source.metadata.num_row_groups):
            try:
                table = handle.read_row_group(group, columns=columns)
            except READ_ERRORS as exc:
                if not ignore_data_errors:
                    raise DataError(f"row group {group} cannot be read ({exc})", source.path) from None
                rows = source.metadata.row_group(group).num_rows
                progress.update(rows)
                logger.warning("skipping unreadable row group %d of %s (%d rows dropped): %s", group, source.path,
                               rows, exc)
                dropped += rows
                batch = pa.RecordBatch.from_pylist([], schema=schema)
            else:
                check_values(layout, table, source.path)
                for column, count in null_discrete_counts(layout, table).items():
                    nulls[column] = nulls.get(column, 0) + count
                batch = convert(table)
                progress.update(table.num_rows)
            # One record batch per row group: the prepared dataset's units are the source's.
            writer.write_batch(batch)
            row_groups.append(batch.num_rows)
    with ipc.open_file(str(tmp)) as written:
        # From the file as a reader sees it (buffers padded and, with compression, decompressed as read).
        checksums = [prepared.column_checksums(written.get_batch(i)) for i in range(written.num_record_batches)]
    os.replace(tmp, target)
    for column, count in nulls.items():
        logger.warning("%s: %d null values in discrete column %s: read as id 0", source.path, count, column)
    return {"name": target.name, "bytes": target.stat().st_size, "rows": sum(row_groups), "row_groups": row_groups,
            "dropped_rows": dropped, "null_discrete": nulls, "source": _source_identity(source), "checksums": checksums,
            "source_schema": {c: str(handle.schema_arrow.field(c).type) for c in columns}}


def prepare(data: DataConfig, source: str, destination: str, compression: str = "none",
            overwrite: bool = False) -> dict:
    """Write the prepared layout of `source` (every task's label in data.tasks) to `destination`; its manifest.

    A destination already prepared from the same source with the same columns is brought up to date (files whose
    source changed, was added or removed are rewritten, the others kept); one prepared from another source or config
    is replaced with `overwrite`, else an error, as is a non-empty directory that is not a prepared dataset.
    """
    if "://" not in source:
        # The manifest's source is absolute, so the check of its file list works from any working directory.
        source = os.path.abspath(source)
    layout = build_layout(data, list(data.tasks))
    scanned = scan_dataset([source], data.ignore_data_errors)
    sources = [f for f in scanned.files if isinstance(f, ParquetSource)]
    if scanned.prepared or len(sources) != len(scanned.files):
        raise DataError("already a prepared dataset", source)
    validate_scanned(layout, scanned, require_labels=False)
    layout = detect_oracle(layout, scanned)
    columns = prepared.column_plan(layout)
    identities = [_source_identity(f) for f in sources]
    out = Path(destination)
    header = {"format": prepared.FORMAT, "version": prepared.VERSION, "source_paths": [source], "columns": columns,
              "compression": compression, "num_source_files": len(scanned.files), "skipped_files": scanned.skipped,
              "source_files": [f.path for f in scanned.files] + scanned.skipped}
    final, partial = out / prepared.MANIFEST, out / prepared.PARTIAL_MANIFEST
    done: dict[str, dict] = {}
    if final.exists():
        manifest = prepared.read_manifest(pafs.LocalFileSystem(), str(final), any_version=True)
        if _same_job(manifest, header) and manifest.get("version") == prepared.VERSION and (
                [e["source"] for e in manifest["files"]] == identities
                and manifest.get("source_files") == header["source_files"]
                and not _files_not_as_written(out, manifest)):
            logger.info("%s is already prepared from %s", destination, source)
            return manifest
        if _same_job(manifest, header):
            logger.info("%s: the source changed since it was prepared, or prepared files were removed or resized; "
                        "preparing those again", destination)
            # The files stay as they are until rewritten, but the dataset stops being one until it is complete.
            _write_json(partial, {**manifest, "files": manifest["files"]})
            final.unlink()
        elif overwrite:
            _remove_prepared(out)
        else:
            raise DataError(f"holds a prepared dataset of another source ({', '.join(manifest.get('source_paths', []))}"
                            ") or config; pass --overwrite to replace it, or choose another directory", destination)
    if partial.exists():
        manifest = prepared.read_manifest(pafs.LocalFileSystem(), str(partial), any_version=True)
        if _same_job(manifest, header) and manifest.get("version") == prepared.VERSION:
            done = {e["name"]: e for e in manifest["files"]}
        else:
            logger.warning("%s: an interrupted prepare of another source, config or format; starting over",
                           destination)
    elif out.exists() and any(out.iterdir()):
        raise DataError("is not empty and not a prepared dataset; choose an empty or new directory", destination)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    progress = Progress(f"preparing {destination}", scanned.num_rows)
    for index, (source_file, identity) in enumerate(zip(sources, identities)):
        target = out / f"part-{index:05d}.arrow"
        kept = done.get(target.name)
        if (kept is not None and kept["source"] == identity and target.exists()
                and target.stat().st_size == kept["bytes"]):
            entries.append(kept)
            progress.update(kept["rows"] + kept.get("dropped_rows", 0))
            continue
        entries.append(_prepare_file(layout, source_file, target, data.ignore_data_errors,
                                     None if compression == "none" else compression, progress))
        _write_json(partial, {**header, "files": entries})
    progress.close()
    # Files of an earlier, larger source: not part of the dataset any more.
    for path in out.glob("part-*.arrow"):
        if path.name not in {e["name"] for e in entries}:
            path.unlink()
    manifest = {**header, "files": entries, "num_rows": sum(e["rows"] for e in entries)}
    _write_json(final, manifest)
    partial.unlink(missing_ok=True)
    return manifest


def _files_not_as_written(out: Path, manifest: dict) -> list[str]:
    """The manifest's files that are missing or of another size, to prepare again: what a user removes after the
    loader's checksum error (checking every file's checksums here would read the whole dataset back)."""
    return [e["name"] for e in manifest["files"]
            if not (out / e["name"]).is_file() or (out / e["name"]).stat().st_size != e["bytes"]]


def _remove_prepared(out: Path) -> None:
    """Delete a prepared dataset's own files (manifest first: a reader never sees a dataset with files missing)."""
    (out / prepared.MANIFEST).unlink()
    (out / prepared.PARTIAL_MANIFEST).unlink(missing_ok=True)
    for path in [*out.glob("part-*.arrow"), *out.glob(".part-*.arrow.tmp")]:
        path.unlink()


def _same_job(manifest: dict, header: dict) -> bool:
    """Whether a manifest is of the same source and columns (its files may be out of date)."""
    keys = ("source_paths", "columns", "compression")
    return all(json.loads(json.dumps(manifest.get(k))) == json.loads(json.dumps(header[k])) for k in keys)
