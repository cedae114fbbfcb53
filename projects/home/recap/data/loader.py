"""The recap data loader: parquet row groups split across ranks and DataLoader workers, yielding RecapBatch.

    loader = RecapDataLoader(data, data.train, tasks, "train", rank, world_size, batch_size)
    for batch in loader: ...                       # one epoch (or forever with repeat=True)
    state = loader.state_dict(); loader.load_state_dict(state)   # resume at the same batch

Train mode shuffles row-group order per epoch and rows within a shuffle buffer, drops the last partial batch and
gives every rank the same number of batches. Eval and predict modes read every row exactly once in a fixed order;
the last batch may be short. Prediction tolerates missing label columns (labels NaN, weights 0).

This module cuts the chunks into batches and keeps the epochs and the position; epoch_stream.py reads, converts and
assembles each rank's (or DataLoader worker's) chunks, and prefetch.py reads ahead on a thread when there are no
workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from common.batch import RecapBatch
from core.loader_workers import stop_signals_held, worker_init
from core.log import get_logger
from projects.home.recap.data import prepared, sharding
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.epoch_stream import WORKER_DATA_ERROR, EpochStream
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.data.layout import build_layout
from projects.home.recap.data.mode import Mode
from projects.home.recap.data.prefetch import prefetched
from projects.home.recap.data.validation import detect_oracle, validate_dataset, validate_scanned

__all__ = ["RecapDataLoader", "prefetched", "split_batches", "validate_dataset"]

logger = get_logger(__name__)


def _identity(x):
    return x


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
        self._stream = EpochStream(scanned, self.layout, mode, rank, world_size, batch_size,
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
            if WORKER_DATA_ERROR in chunk:
                del iterator
                self.close()
                raise chunk[WORKER_DATA_ERROR]
            yield chunk

    def close(self) -> None:
        """Shut the DataLoader workers down now (the next epoch starts new ones). The training process calls it when
        it stops: the workers ignore stop signals from anyone else (core/loader_workers.py)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the DataLoader's iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
