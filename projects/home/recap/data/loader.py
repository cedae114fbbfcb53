"""The recap data loader: parquet row groups split across ranks and DataLoader workers, yielding RecapBatch.

    loader = RecapDataLoader(data, data.train, tasks, "train", rank, world_size, batch_size)
    for batch in loader: ...                       # one epoch (or forever with repeat=True)
    state = loader.state_dict(); loader.load_state_dict(state)   # resume at the same batch

Train mode shuffles row-group order per epoch and rows within a shuffle buffer, drops the last partial batch and
gives every rank the same number of batches. Eval and predict modes read every row exactly once in a fixed order;
the last batch may be short. Prediction tolerates missing label columns (labels NaN, weights 0).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.batch import RecapBatch
from core.loader_workers import stop_signals_held, worker_init
from core.log import get_logger
from projects.home.recap.data import prepared, sharding
from projects.home.recap.data.columns import (
    ArrayBlock,
    assemble,
    check_values,
    null_discrete_counts,
    to_arrays,
)
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import READ_ERRORS, ScannedDataset, scan_dataset
from projects.home.recap.data.layout import BatchLayout, build_layout
from projects.home.recap.data.validation import detect_oracle, validate_dataset, validate_scanned

__all__ = ["RecapDataLoader", "split_batches", "validate_dataset"]

logger = get_logger(__name__)
Mode = Literal["train", "eval", "predict"]
_OPEN_FILES = 16
# The key of a chunk that carries a worker's DataError instead of rows.
_WORKER_DATA_ERROR = "data_error"


def _identity(x):
    return x


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


class _EpochStream(IterableDataset):
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
                yield {_WORKER_DATA_ERROR: exc}
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


def split_batches(chunk: dict, batch_size: int, sparse_keys: list[str]) -> Iterator[tuple[RecapBatch, int]]:
    """Cut a worker's chunk into RecapBatches (views, no copies) and their counts of non-finite continuous values."""
    n = chunk["labels"].shape[0]
    nonfinite = chunk["nonfinite"].numpy()
    k = len(sparse_keys)
    bounds = chunk["sparse_value_bounds"].tolist() if k else None
    oracle = chunk.get("oracle")
    sequences = chunk.get("sequences") or {}
    offsets = {group: fields["offsets"].tolist() for group, fields in sequences.items()}
    for j, a in enumerate(range(0, n, batch_size)):
        b = min(a + batch_size, n)
        sparse = None
        if k:
            # torchrec only for data with sparse columns: dense-only data loads without it.
            from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

            # The chunk holds each batch's ids and lengths in KeyedJaggedTensor order: both are plain slices.
            sparse = KeyedJaggedTensor(keys=sparse_keys, values=chunk["sparse_values"][bounds[j] : bounds[j + 1]],
                                       lengths=chunk["sparse_lengths"][k * a : k * b], stride=b - a)
        batch = RecapBatch(
            continuous=chunk["continuous"][a:b],
            binary=chunk["binary"][a:b],
            discrete=chunk["discrete"][a:b],
            sparse=sparse,
            embeddings=chunk["embeddings"][a:b],
            labels=chunk["labels"][a:b],
            weights=chunk["weights"][a:b],
            ids={name: v[a:b] for name, v in chunk["ids"].items()},
            oracle=None if oracle is None else oracle[a:b],
            sequences={group: _sequence_slice(fields, offsets[group], a, b) for group, fields in sequences.items()},
        )
        yield batch, int(nonfinite[b] - nonfinite[a])


def _sequence_slice(fields: dict[str, torch.Tensor], offsets: list[int], a: int, b: int) -> dict[str, torch.Tensor]:
    """Rows a..b of a history group: per-row lengths and candidate ids, and the rows' items (views, no copies)."""
    out = {}
    for key, tensor in fields.items():
        if key == "offsets":
            continue
        per_row = key == "lengths" or key.startswith("candidate:")
        out[key] = tensor[a:b] if per_row else tensor[offsets[a] : offsets[b]]
    return out


_END = object()


def prefetched(items: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """The items of `items`, produced on a background thread up to `depth` ahead of the consumer. An exception in
    the producer is raised here; closing this generator early stops the producer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    # The CUDA device is per thread: pinning memory on the producer must not touch (and create a context on) GPU 0.
    cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put((_END, exc))
            return
        put((_END, None))

    producer = threading.Thread(target=produce, name="recap-loader-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        producer.join()


class RecapDataLoader:
    """Batches of one dataset for one rank, with epochs, endless repeat and a resumable position."""

    def __init__(
        self,
        data: DataConfig,
        dataset: DatasetConfig,
        tasks: list[str],
        mode: Mode,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
        *,
        repeat: bool = False,
        num_workers: int | None = None,
        pin_memory: bool = False,
    ):
        if mode not in ("train", "eval", "predict"):
            raise ValueError(f"mode must be train, eval or predict, got {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size is None:
            batch_size = data.batch_size if mode == "train" else (data.eval_batch_size or data.batch_size)
        self.mode = mode
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.repeat = repeat
        self.num_workers = data.num_workers if num_workers is None else num_workers
        self.pin_memory = pin_memory
        scanned = scan_dataset(dataset.paths, data.ignore_data_errors)
        layout = build_layout(data, self.tasks)
        validate_scanned(layout, scanned, require_labels=mode != "predict")
        # Batches carry oracle probabilities (RecapBatch.oracle) when every file has every task's oracle column.
        self.layout = detect_oracle(layout, scanned)
        prepared.check_layout(self.layout, scanned.files)
        self.scanned = scanned
        if mode == "train" and sharding.train_batches_per_rank(scanned.num_rows, world_size, batch_size) == 0:
            raise DataError(f"{scanned.num_rows} rows are fewer than one batch of {batch_size} per rank on "
                            f"{world_size} ranks", scanned.describe())
        self._stream = _EpochStream(scanned, self.layout, mode, rank, world_size, batch_size,
                                    shuffle=data.shuffle and mode == "train", seed=data.seed,
                                    buffer_rows=data.shuffle_buffer_rows,
                                    ignore_data_errors=data.ignore_data_errors)
        self._stream.num_workers = max(1, self.num_workers)
        self._loader: DataLoader | None = None
        self._sparse_keys = [r.name for r in self.layout.sparse]
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded
        self._restart = mode != "train"
        self.num_nonfinite = 0  # non-finite continuous values seen (NaN/inf; featurization maps them)
        self.num_rows = scanned.num_rows

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._stream.num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Start at the beginning of `epoch` (its shuffle order is seeded by data.seed and the epoch)."""
        self.epoch = epoch
        self.position = 0

    def state_dict(self) -> dict:
        """The position: epoch and batches of it already yielded (the batch order also depends on num_workers)."""
        return {"epoch": self.epoch, "position": self.position, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict) -> None:
        """Continue with the batch after the one the saved loader yielded last (skipping without reading)."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        saved_workers = state.get("num_workers", self.num_workers)
        if saved_workers != self.num_workers and self.position:
            logger.warning("resuming epoch %d at batch %d with num_workers=%d, saved with %d: workers split the "
                           "epoch differently, so the rest of this epoch is not the uninterrupted run's",
                           self.epoch, self.position, self.num_workers, saved_workers)
        self._restart = False

    def __iter__(self) -> Iterator[RecapBatch]:
        # Eval and predict passes start from the top each time unless a position was loaded; training continues.
        if self._restart:
            self.position = 0
        self._restart = self.mode != "train"
        while True:
            seen = self.num_nonfinite
            yield from self._epoch()
            if self.num_nonfinite > seen:
                logger.info("%s pass of epoch %d: %d non-finite continuous values (featurization maps them to 0)",
                            self.mode, self.epoch, self.num_nonfinite - seen)
            self.epoch += 1
            self.position = 0
            if not self.repeat:
                return

    def _epoch(self) -> Iterator[RecapBatch]:
        if self.position >= len(self):
            return
        self._stream.position[0], self._stream.position[1] = self.epoch, self.position
        if self._loader is None:
            self._loader = DataLoader(self._stream, batch_size=None, collate_fn=_identity,
                                      num_workers=self.num_workers, pin_memory=self.pin_memory,
                                      persistent_workers=self.num_workers > 0,
                                      worker_init_fn=worker_init if self.num_workers > 0 else None)
        # Without workers, the next fill is read on a thread while the training step runs on this one's batches
        # (arrow's decoding and torch's kernels release the GIL), in the same order.
        chunks = self._from_workers(self._loader) if self.num_workers > 0 else prefetched(self._loader)
        for chunk in chunks:
            for batch, nonfinite in split_batches(chunk, self.batch_size, self._sparse_keys):
                self.num_nonfinite += nonfinite
                self.position += 1
                yield batch

    def _from_workers(self, chunks: Iterable[dict]) -> Iterator[dict]:
        """The workers' chunks. A worker's error ends the epoch: a DataError is raised as the worker raised it (one
        line naming the file), any other error with the worker's traceback in its message. The workers are shut down
        before it is raised, while their queues are alive. Left to the garbage collector (the main-side traceback
        holds the DataLoader iterator), each would wait out torch's 5 s shutdown timeout."""
        with stop_signals_held():  # the first call forks the workers: see core/loader_workers.py
            iterator = iter(chunks)
        del chunks
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                del iterator
                self.close()
                raise exc.with_traceback(None) from exc.__cause__
            if _WORKER_DATA_ERROR in chunk:
                del iterator
                self.close()
                raise chunk[_WORKER_DATA_ERROR]
            yield chunk

    def close(self) -> None:
        """Shut the DataLoader workers down now (the next epoch starts new ones). The training process calls it when
        it stops: the workers ignore stop signals from anyone else (core/loader_workers.py)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the DataLoader's iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
