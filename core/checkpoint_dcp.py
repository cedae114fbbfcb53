"""The tensors of a checkpoint through torch.distributed.checkpoint (DCP): written as shards by every rank, loaded
in place after a check that they fit the model, and read without unpickling arbitrary objects.

Only tensors go into DCP. DCP's `.metadata` file is a pickle: it is read with an unpickler that accepts DCP's own
metadata classes and nothing else, and entries that would be unpickled on load (non-tensor objects) are refused.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from core.checkpoint import CheckpointError, CheckpointMismatchError, StorePath
from core.object_path import ObjectPath
from core.storage import location

_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only DCP metadata objects, torch dtypes and sizes; any other global is refused."""

    def __init__(self, file, path: StorePath) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint {self._path}: metadata refers to {module}.{name}, which is not allowed")


def read_metadata(path: str | os.PathLike) -> Metadata:
    """DCP metadata of a checkpoint directory, read safely; every entry must be a tensor."""
    path = location(path)
    file = path / ".metadata"
    try:
        with file.open("rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {file.name} is missing") from None
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise CheckpointError(f"checkpoint {path}: {file.name} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"checkpoint {path}: {file.name} does not hold DCP metadata")
    not_tensors = [k for k, v in metadata.state_dict_metadata.items() if not isinstance(v, TensorStorageMetadata)]
    if not_tensors:
        raise CheckpointError(f"checkpoint {path}: entries {not_tensors[:5]} are not tensors; refusing to unpickle them")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the metadata read by the restricted unpickler (tensor data is read by torch.load
    with weights_only=True)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"checkpoint {self.path}: per-rank metadata files are not supported")
        metadata = read_metadata(Path(self.path))
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeFsspecReader(FsspecReader):
    """DCP's fsspec reader (object stores) with the metadata read by the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"checkpoint {self.path}: per-rank metadata files are not supported")
        metadata = read_metadata(str(self.path))
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _reader(path: StorePath) -> FileSystemReader:
    return SafeFsspecReader(str(path)) if isinstance(path, ObjectPath) else SafeFileSystemReader(path)


def flatten_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves under their dotted names (DCP's names for them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_keys(value, name + "."))
        else:
            out[name] = value
    return out


def check_tensors_only(tensors: Mapping[str, Any]) -> None:
    """Raise TypeError naming the first leaves that are not tensors (DCP would pickle them)."""
    bad = [k for k, v in flatten_keys(tensors).items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"only tensors go into a checkpoint's DCP state; not tensors: {bad[:5]}")


def check_compatible(path: StorePath, tensors: Mapping[str, Any]) -> None:
    """Raise CheckpointMismatchError naming the first tensors that the checkpoint lacks or holds in another shape."""
    saved = read_metadata(path).state_dict_metadata
    problems = []
    for name, tensor in flatten_keys(tensors).items():
        entry = saved.get(name)
        if entry is None:
            problems.append(f"{name} is not in it")
        elif isinstance(entry, TensorStorageMetadata) and tuple(entry.size) != tuple(tensor.size()):
            problems.append(f"{name} has shape {tuple(entry.size)}, this run has {tuple(tensor.size())}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this run's model and optimizers (was the config changed?): {shown}. "
            "Use the config the checkpoint was trained with: its run's save_dir holds it as config.yaml (--run "
            "SAVE_DIR reads it, --set values included); or train in a new save_dir (training.warm_start_from takes "
            "the weights that still fit)"
        )


def load_tensors(path: StorePath, tensors: dict[str, Any], allow_partial: bool = False) -> None:
    """Load a checkpoint's DCP state into `tensors` in place (a nested dict of tensors, ShardedTensors, DTensors)."""
    check_tensors_only(tensors)
    if not allow_partial:
        check_compatible(path, tensors)
    try:
        dcp.load(
            tensors,
            storage_reader=_reader(path),
            planner=DefaultLoadPlanner(allow_partial_load=allow_partial),
        )
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
        raise CheckpointError(f"checkpoint {path}: loading failed ({describe_failure(exc)})") from exc


def describe_failure(exc: BaseException) -> str:
    """`Type: message` of an error in one line; for DCP's CheckpointException, that of each rank's error (its own
    text holds their tracebacks)."""
    if isinstance(exc, CheckpointException):
        return "; ".join(f"rank {rank}: {type(error).__name__}: {error}" for rank, (error, _) in
                         sorted(exc.failures.items()))
    return f"{type(exc).__name__}: {exc}"


def save_tensors(path: StorePath, tensors: dict[str, Any]) -> None:
    """Write `tensors` (checked by check_tensors_only) as DCP shards under `path`, a directory that exists on a disk
    (collective: every rank writes its own)."""
    writer = (FsspecWriter(str(path), sync_files=False) if isinstance(path, ObjectPath)  # a PUT is durable at once
              else FileSystemWriter(path, sync_files=True))
    dcp.save(tensors, storage_writer=writer)
