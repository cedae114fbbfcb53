"""One rank's rows of one epoch as a torch IterableDataset: row groups read (checked, only the configured
columns), converted, shuffled within a fill and assembled into chunks of batches, in the loader's process or split
across its DataLoader workers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from core.log import get_logger
from projects.home.recap.data import prepared, sharding
from projects.home.recap.data.columns import (
    ArrayBlock,
    assemble,
    check_values,
    null_discrete_counts,
    to_arrays,
)
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import READ_ERRORS, ScannedDataset
from projects.home.recap.data.layout import BatchLayout
from projects.home.recap.data.mode import Mode

logger = get_logger(__name__)
_OPEN_FILES = 16
# The key of a chunk that carries a worker's DataError instead of rows.
WORKER_DATA_ERROR = "data_error"


class UnitReader:
    """Reads row groups (checked, only the configured columns), keeping a few files open and the last group cached."""

    def __init__(self, scanned: ScannedDataset, layout: BatchLayout, ignore_data_errors: bool, use_threads: bool,
                 reported_nulls: set[tuple[str, str]] | None = None):
        self.scanned = scanned
        self.layout = layout
        self.ignore_data_errors = ignore_data_errors
        self.use_threads = use_threads
        # (file, column) pairs whose null discrete values were logged; the stream keeps it across epochs.
        self._reported_nulls = reported_nulls if reported_nulls is not None else set()
        self._open: OrderedDict[int, tuple[pq.ParquetFile, list[str]]] = OrderedDict()
        self._last: tuple[int, pa.Table | None] | None = None

    def _file(self, index: int) -> tuple[pq.ParquetFile, list[str]]:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        handle = self.scanned.files[index].open()
        names = set(handle.schema_arrow.names)
        # Label columns may be absent when predicting; everything else was checked by validation.
        entry = (handle, [c for c in self.layout.columns if c in names])
        self._open[index] = entry
        if len(self._open) > _OPEN_FILES:
            self._open.popitem(last=False)
        return entry

    def read(self, unit: int) -> pa.Table | None:
        """The row group's table, or None when it is unreadable and data errors are ignored."""
        if self._last is not None and self._last[0] == unit:
            return self._last[1]
        file_index, row_group, num_rows = (int(v) for v in self.scanned.units[unit])
        path = self.scanned.files[file_index].path
        try:
            handle, columns = self._file(file_index)
            table = handle.read_row_group(row_group, columns=columns, use_threads=self.use_threads)
        except READ_ERRORS as exc:
            if not self.ignore_data_errors:
                raise DataError(f"row group {row_group} cannot be read ({exc})", path) from None
            logger.warning("skipping unreadable row group %d of %s (%d rows dropped): %s", row_group, path, num_rows,
                           exc)
            table = None
        if table is not None:
            check_values(self.layout, table, path)
            self._report_null_discrete(table, path, row_group)
        self._last = (unit, table)
        return table

    def _report_null_discrete(self, table: pa.Table, path: str, row_group: int) -> None:
        # Null categories are read as id 0: said once per file and column, like non-finite continuous values.
        for column, count in null_discrete_counts(self.layout, table).items():
            if (path, column) not in self._reported_nulls:
                self._reported_nulls.add((path, column))
                logger.warning("%s: %d null values in discrete column %s (row group %d; more may follow in this "
                               "file): read as id 0", path, count, column, row_group)


class EpochStream(IterableDataset):
    """One rank's rows of one epoch; in a DataLoader worker, that worker's share. Yields one dict per fill."""

    def __init__(self, scanned: ScannedDataset, layout: BatchLayout, mode: Mode, rank: int, world_size: int,
                 batch_size: int, shuffle: bool, seed: int, buffer_rows: int, ignore_data_errors: bool):
        self.scanned = scanned
        self.layout = layout
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.drop_last = mode == "train"
        self.shuffle = shuffle
        self.seed = seed
        self.fill_rows = sharding.fill_size(buffer_rows, batch_size)
        self.ignore_data_errors = ignore_data_errors
        # (epoch, batches to skip) of the next pass, in shared memory: persistent DataLoader workers forked once
        # still see every update the loader makes.
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.num_workers = 1
        self._reported_nulls: set[tuple[str, str]] = set()
        # Prepared files are read as row groups are (same tables, same conversion); only the final gather differs.
        self._assemble = prepared.assemble if scanned.prepared else assemble

    @property
    def epoch(self) -> int:
        return int(self.position[0])

    def rank_range(self) -> tuple[int, int]:
        return sharding.rank_range(self.scanned.num_rows, self.rank, self.world_size, self.batch_size, self.drop_last)

    def num_batches(self) -> int:
        start, stop = self.rank_range()
        return sharding.num_batches(stop - start, self.batch_size, self.drop_last)

    def worker_fills(self, worker: int) -> list[tuple[int, int]]:
        start, stop = self.rank_range()
        lo, hi, _ = sharding.worker_range(start, stop, self.batch_size, self.drop_last, self.num_workers, worker)
        return sharding.fills(lo, hi, self.fill_rows)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        layouts = [self.worker_fills(k) for k in range(self.num_workers)]
        per_fill = [[sharding.num_batches(e - s, self.batch_size, self.drop_last) for s, e in w] for w in layouts]
        epoch, skip = (int(v) for v in self.position)
        first_fill, first_batch = sharding.resume_points(per_fill, skip)[worker]
        order = sharding.unit_order(len(self.scanned.units), self.shuffle, self.seed, epoch)
        rows_in_order = self.scanned.units[order, 2]
        # Several workers already keep the cores busy. One worker, or the training process itself (which waits for
        # the batch while it is read, so its cores are idle), decodes with arrow's thread pool.
        reader = UnitReader(self.scanned, self.layout, self.ignore_data_errors, use_threads=self.num_workers <= 1,
                            reported_nulls=self._reported_nulls)
        shared = info is not None

        for i in range(first_fill, len(layouts[worker])):
            try:
                blocks, rows = self._read_fill(reader, rows_in_order, order, epoch, *layouts[worker][i])
            except DataError as exc:
                if not shared:
                    raise
                # Raised in a worker, torch would wrap it ("Caught DataError in DataLoader worker process 0" and the
                # worker's traceback); handed over as data, the loader raises the error itself (_from_workers).
                yield {WORKER_DATA_ERROR: exc}
                return
            if i == first_fill and first_batch:
                rows = rows[first_batch * self.batch_size :]
            yield self._assemble(blocks, rows, self.batch_size, shared)

    def _read_fill(self, reader: UnitReader, rows_in_order: np.ndarray, order: np.ndarray, epoch: int, start: int,
                   stop: int) -> tuple[list[ArrayBlock], np.ndarray]:
        """The fill's row groups (converted) and the order to emit their rows in."""
        blocks = []
        for span in sharding.spans(rows_in_order, order, start, stop):
            table = reader.read(span.unit)
            if table is not None:
                blocks.append(to_arrays(self.layout, table.slice(span.start, span.stop - span.start)))
        if not blocks:
            raise DataError(f"rows {start}-{stop} of epoch {epoch} are all unreadable", self.scanned.describe())
        have = sum(b.num_rows for b in blocks)
        rows = np.arange(have)
        rng = np.random.default_rng([self.seed, epoch, start])
        if have < stop - start and self.drop_last:
            # Unreadable rows were skipped: resample read ones so every rank keeps its batch count.
            logger.warning("epoch %d, rows %d-%d: %d unreadable rows replaced by repeats of %d readable ones (every "
                           "rank keeps its batch count)", epoch, start, stop, stop - start - have, have)
            rows = np.concatenate([rows, rng.integers(0, have, stop - start - have)])
        if self.shuffle:
            rows = rng.permutation(rows)
        return blocks, rows
