"""Checkpoints with torch.distributed.checkpoint (DCP): sharded tensors written by every rank, made visible only
when complete, verified before loading, and read without unpickling arbitrary objects.

Layout under a checkpoint directory (e.g. SAVE_DIR/checkpoints):
  step_00001000/              one complete checkpoint (the step counter after 1000 updates)
    .metadata, __R_0.distcp   DCP: model, optimizer states (tensors only)
    rank_R.json               per-rank state (data position, random generators, ...)
    checkpoint.json           step, world size, caller's info and a manifest (size, sha256) of every file;
                              written last, just before the directory is renamed into place
  .step_00002000.partial/     a checkpoint being written (or abandoned by a crash): never loaded
  best.json                   model selection (core/early_stopping.py): the best step by the validation metric and
                              the evaluations' history; that step's checkpoint is kept beside the last K, and
                              evaluate / predict / export pick it when given the run, the checkpoints directory
                              or `checkpoints/best` (`checkpoints/latest` names the newest)

On an object store (save_dir s3://..., gs://...; core/storage.py) there is no rename: a checkpoint is written in place
under step_N/ through DCP's fsspec writer, each rank its own shards, and checkpoint.json is written last, by rank 0
once every rank has finished: it is the "complete" marker, so a checkpoint interrupted mid-write (no checkpoint.json)
is never listed, never loaded, and deleted at the next save. Removing a checkpoint deletes its whole prefix. The
manifest's hashes are computed by all ranks, each over its share of the files, on a disk and a store alike.

Only tensors go into DCP. DCP's `.metadata` file is a pickle: it is read with an unpickler that accepts DCP's own
metadata classes and nothing else, and entries that would be unpickled on load (non-tensor objects) are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from core import storage
from core.distributed import DistributedContext, barrier
from core.log import get_logger
from core.storage import ObjectPath, location

logger = get_logger(__name__)

FORMAT_VERSION = 1
INFO_FILE = "checkpoint.json"
BEST_FILE = "best.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model; the message names its path."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint whose tensors do not fit the model being trained (its config changed): never corruption."""


# A checkpoint directory on a disk, or a prefix on an object store (core/storage.py).
StorePath = Path | ObjectPath


@dataclass(frozen=True)
class Checkpoint:
    path: StorePath
    step: int


# --- reading DCP metadata safely -----------------------------------------------------------------------------------
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


# --- files ---------------------------------------------------------------------------------------------------------
def _write_json(path: StorePath, data: Mapping[str, Any]) -> None:
    storage.write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _read_json(path: StorePath, checkpoint: StorePath) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} does not hold a JSON object")
    return data


def _sha256(path: StorePath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sizes(directory: StorePath) -> dict[str, int]:
    """{name: bytes} of the files directly in a directory (one listing on an object store)."""
    if isinstance(directory, ObjectPath):
        def listing() -> list[dict[str, Any]]:
            try:
                return directory.fs.ls(directory.key, detail=True, refresh=True)
            except FileNotFoundError:
                return []

        entries = directory._call("listing", listing)
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                for e in entries if e.get("type") == "file"}
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}


def _manifest(directory: StorePath, ctx: DistributedContext) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a checkpoint being written (collective: each rank hashes its share of the
    files, so no rank reads the whole checkpoint back; the result is complete on rank 0)."""
    sizes = {name: size for name, size in file_sizes(directory).items()
             if name != INFO_FILE and not name.endswith(".tmp")}
    names = sorted(sizes)
    share = {name: _sha256(directory / name) for name in names[ctx.rank::ctx.world_size]}
    hashes = _gather(share, ctx)
    return {name: {"bytes": sizes[name], "sha256": hashes.get(name)} for name in names}


def _gather(share: dict[str, str], ctx: DistributedContext) -> dict[str, str]:
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return share
    shares: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(shares, share)
    return {name: digest for part in shares for name, digest in part.items()}


def verify_files(path: StorePath, info: Mapping[str, Any], check_hashes: bool = True,
                 share: tuple[int, int] = (0, 1)) -> None:
    """Raise CheckpointError if a file of the manifest is missing, has another size or (check_hashes) content;
    share=(rank, world size) hashes only that rank's share of the files (every rank checks every size)."""
    manifest = info.get("files")
    if not isinstance(manifest, dict) or not manifest:
        raise CheckpointError(f"checkpoint {path}: {INFO_FILE} has no file manifest")
    sizes = file_sizes(path)
    rank, world = share
    for i, (name, entry) in enumerate(sorted(manifest.items())):
        if name not in sizes:
            raise CheckpointError(f"checkpoint {path}: file {name} is missing")
        size = sizes[name]
        if size != entry["bytes"]:
            raise CheckpointError(f"checkpoint {path}: file {name} has {size} bytes, {entry['bytes']} were written")
        if check_hashes and i % world == rank and _sha256(path / name) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {name} is corrupt (its sha256 does not match)")


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint.json of a complete checkpoint directory."""
    path = location(path)
    info = _read_json(path / INFO_FILE, path)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {info.get('format_version')} is not {FORMAT_VERSION}")
    return info


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints (those with a checkpoint.json) in `directory`, oldest first."""
    directory = location(directory)
    found = []
    for child, step in _step_dirs(directory):
        if (child / INFO_FILE).is_file():
            found.append(Checkpoint(child, step))
    return sorted(found, key=lambda c: c.step)


def _step_dirs(directory: StorePath) -> list[tuple[StorePath, int]]:
    """(path, step) of the step_N directories (prefixes on an object store) in `directory`."""
    remote = isinstance(directory, ObjectPath)
    if not remote and not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (remote or child.is_dir()):
            found.append((child, int(match.group(1))))
    return found


def read_best(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The model-selection record (best.json) of a checkpoints directory, or None when it has none."""
    path = location(directory) / BEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); remove it to use the latest checkpoint") from exc


def best_checkpoint(directory: str | os.PathLike) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The checkpoint best.json marks, with its record, when both exist and the checkpoint is complete."""
    record = read_best(directory)
    if record is None or record.get("best_step") is None:
        return None
    for checkpoint in list_checkpoints(directory):
        if checkpoint.step == record["best_step"]:
            return checkpoint, record
    return None


def resolve_checkpoint(path: str | os.PathLike, announce: bool = False) -> Checkpoint:
    """A checkpoint named by its directory, by `checkpoints/best` or `checkpoints/latest`, or by a directory of
    checkpoints or a run's save_dir: there the best one by model selection (best.json) when marked, else the
    newest. With `announce`, says which one was picked and why."""
    path = location(path)
    match = _STEP_DIR.match(path.name)
    if match and (path / INFO_FILE).is_file():
        return Checkpoint(path, int(match.group(1)))
    alias = path.name if path.name in ("best", "latest") and not path.exists() else None
    directories = [path.parent] if alias else [path, path / "checkpoints"]
    for directory in directories:
        found = list_checkpoints(directory)
        if not found:
            continue
        best = best_checkpoint(directory) if alias != "latest" else None
        if best is not None:
            checkpoint, record = best
            if announce:
                logger.info("using the best checkpoint %s (%s = %.6g; the newest is %s); name a step_ directory "
                            "or checkpoints/latest for another", checkpoint.path, record.get("selected"),
                            record.get("best_value"), found[-1].path.name)
            return checkpoint
        if alias == "best":
            raise CheckpointError(f"{path}: no best checkpoint is marked in {directory} (training.early_stopping "
                                  f"was not set, or no evaluation has run); the newest is {found[-1].path}")
        if announce:
            logger.info("using the newest checkpoint %s", found[-1].path)
        return found[-1]
    raise CheckpointError(f"no complete checkpoint at {path} (looked for step_*/{INFO_FILE} there and in checkpoints/)")


# --- saving and loading ----------------------------------------------------------------------------------------------
def _flatten_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_keys(value, name + "."))
        else:
            out[name] = value
    return out


def _check_tensors_only(tensors: Mapping[str, Any]) -> None:
    bad = [k for k, v in _flatten_keys(tensors).items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"only tensors go into a checkpoint's DCP state; not tensors: {bad[:5]}")


def check_compatible(path: StorePath, tensors: Mapping[str, Any]) -> None:
    """Raise CheckpointMismatchError naming the first tensors that the checkpoint lacks or holds in another shape."""
    saved = read_metadata(path).state_dict_metadata
    problems = []
    for name, tensor in _flatten_keys(tensors).items():
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
    _check_tensors_only(tensors)
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
        raise CheckpointError(f"checkpoint {path}: loading failed ({_cause(exc)})") from exc


def _cause(exc: BaseException) -> str:
    """`Type: message` of an error in one line; for DCP's CheckpointException, that of each rank's error (its own
    text holds their tracebacks)."""
    if isinstance(exc, CheckpointException):
        return "; ".join(f"rank {rank}: {type(error).__name__}: {error}" for rank, (error, _) in
                         sorted(exc.failures.items()))
    return f"{type(exc).__name__}: {exc}"


class CheckpointManager:
    """Saves numbered checkpoints atomically, keeps the last K, finds and verifies them for loading."""

    def __init__(self, directory: str | os.PathLike, ctx: DistributedContext, keep_last_k: int = 3) -> None:
        self.directory = location(directory)
        self.ctx = ctx
        self.keep_last_k = keep_last_k

    def path_for(self, step: int) -> StorePath:
        return self.directory / f"step_{step:08d}"

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        return list_checkpoints(self.directory)

    def latest(self) -> Checkpoint | None:
        found = self.complete()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        tensors: dict[str, Any],
        info: Mapping[str, Any] | None = None,
        rank_info: Mapping[str, Any] | None = None,
    ) -> Checkpoint:
        """Write a checkpoint (collective: every rank calls it). `tensors` go through DCP; `info` (rank 0's) and
        `rank_info` (one per rank) must be JSON-serializable. Visible under step_N only once complete."""
        _check_tensors_only(tensors)
        final = self.path_for(step)
        remote = isinstance(final, ObjectPath)
        # On an object store the checkpoint is written in place: without its checkpoint.json it is never loaded.
        partial = final if remote else self.directory / f".{final.name}.partial"
        try:
            return self._save(step, final, partial, tensors, info, rank_info)
        except (OSError, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
            if self.ctx.is_main:
                # Never loaded either way (not a step_N name), but a full disk is the likely cause: give its space back.
                storage.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final} ({_cause(exc)}); the previous checkpoints are "
                                  "untouched") from exc

    def _save(self, step: int, final: StorePath, partial: StorePath, tensors: dict[str, Any],
              info: Mapping[str, Any] | None, rank_info: Mapping[str, Any] | None) -> Checkpoint:
        remote = isinstance(final, ObjectPath)
        if self.ctx.is_main:
            if remote:
                storage.rmtree(final)  # an interrupted write of this step, or the same step saved again
            else:
                if partial.exists():
                    shutil.rmtree(partial)
                partial.mkdir(parents=True)
        barrier(self.ctx)
        writer = (FsspecWriter(str(partial), sync_files=False) if remote  # a PUT is durable once it returns
                  else FileSystemWriter(partial, sync_files=True))
        dcp.save(tensors, storage_writer=writer)
        _write_json(partial / f"rank_{self.ctx.rank}.json", dict(rank_info or {}))
        barrier(self.ctx)
        files = _manifest(partial, self.ctx)
        if self.ctx.is_main:
            record = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": self.ctx.world_size,
                "info": dict(info or {}),
                "files": files,
            }
            _write_json(partial / INFO_FILE, record)  # last: on an object store, the "complete" marker
            if not remote:
                if final.exists():
                    shutil.rmtree(final)
                os.rename(partial, final)
                _fsync_dir(self.directory)
            self._prune()
            logger.info("saved checkpoint %s", final)
        barrier(self.ctx)
        return Checkpoint(final, step)

    def mark_best(self, record: Mapping[str, Any]) -> None:
        """Write the model-selection record (best.json, rank 0); its best step is kept from now on."""
        if self.ctx.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_json(self.directory / BEST_FILE, record)
            self._prune()

    def _prune(self) -> None:
        best = read_best(self.directory)
        keep = best.get("best_step") if best else None
        for old in self.complete()[: -self.keep_last_k]:
            if old.step != keep:
                storage.rmtree(old.path, ignore_errors=True)
        if isinstance(self.directory, ObjectPath):
            # Interrupted writes: no other write runs now (rank 0 prunes after a save, under the save_dir lock).
            for stale in self._without_info():
                storage.rmtree(stale, ignore_errors=True)
        else:
            for stale in self.directory.glob(".step_*.partial"):
                shutil.rmtree(stale, ignore_errors=True)

    def verify(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Check a checkpoint on every rank (sizes everywhere, content hashes on rank 0) and return its info;
        every rank raises the same CheckpointError if any rank found a problem."""
        problem: str | None = None
        info: dict[str, Any] = {}
        try:
            info = read_info(checkpoint.path)
            verify_files(checkpoint.path, info, share=(self.ctx.rank, self.ctx.world_size))
            read_metadata(checkpoint.path)
        except CheckpointError as exc:
            problem = str(exc)
        if self.ctx.world_size > 1 and torch.distributed.is_initialized():
            problems: list[Any] = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(problems, problem)  # each rank hashed its share of the files
            problem = next((p for p in problems if p is not None), None)
        if problem is not None:
            raise CheckpointError(problem)
        return info

    def load(
        self, checkpoint: Checkpoint, tensors: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Verify, then load a checkpoint into `tensors` in place; returns (info, this rank's rank_info or None
        when the checkpoint was written by a different number of ranks)."""
        record = self.verify(checkpoint)
        load_tensors(checkpoint.path, tensors)
        rank_info = None
        if record["world_size"] == self.ctx.world_size:
            rank_info = _read_json(checkpoint.path / f"rank_{self.ctx.rank}.json", checkpoint.path)
        return record.get("info", {}), rank_info

    def load_latest(
        self, tensors: dict[str, Any], start_over: bool = False
    ) -> tuple[Checkpoint, dict[str, Any], dict[str, Any] | None] | None:
        """Load the newest checkpoint that verifies and loads. A broken one is reported by path and the previous one
        is tried; once one loads, the broken newer ones are renamed step_N.corrupt. If every checkpoint is broken,
        CheckpointError names each and why, unless `start_over` (then they are all moved aside and None returned).
        A checkpoint that does not fit the model (CheckpointMismatchError) is raised at once and never moved.
        None if there is no checkpoint."""
        for stray in self._without_info():
            logger.warning("%s has no %s: not a complete checkpoint, ignored", stray, INFO_FILE)
        rejected: list[tuple[Checkpoint, CheckpointError]] = []
        for checkpoint in reversed(self.complete()):
            try:
                info, rank_info = self.load(checkpoint, tensors)
            except CheckpointMismatchError:
                raise
            except CheckpointError as exc:
                logger.error("%s; falling back to the previous checkpoint", exc)
                rejected.append((checkpoint, exc))
                continue
            self._move_aside([c for c, _ in rejected])
            return checkpoint, info, rank_info
        if rejected and not start_over:
            reasons = "\n".join(f"  {c.path.name}: {exc}" for c, exc in rejected)
            raise CheckpointError(
                f"every checkpoint in {self.directory} was rejected:\n{reasons}\n"
                "nothing was moved; to train from step 0 anyway, pass --start-over (they are then moved aside as "
                "step_N.corrupt)"
            )
        self._move_aside([c for c, _ in rejected])
        return None

    def _without_info(self) -> list[StorePath]:
        return sorted(p for p, _ in _step_dirs(self.directory) if not (p / INFO_FILE).is_file())

    def _move_aside(self, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:  # every rank holds the same list: verification is collective
            return
        barrier(self.ctx)
        if self.ctx.is_main:
            for checkpoint in checkpoints:
                aside = checkpoint.path.with_name(checkpoint.path.name + ".corrupt")
                storage.rmtree(aside, ignore_errors=True)
                storage.move_tree(checkpoint.path, aside)
                logger.error("moved %s to %s", checkpoint.path, aside.name)
        barrier(self.ctx)

def load_model_weights(
    source: str | os.PathLike, model_state: dict[str, Any], ctx: DistributedContext, key: str = "model"
) -> Checkpoint:
    """Warm start: load the `key` entries of another run's checkpoint into `model_state` in place (weights only).
    Entries the checkpoint lacks keep their initial values (logged); a shape mismatch is an error."""
    checkpoint = resolve_checkpoint(source)
    CheckpointManager(checkpoint.path.parent, ctx).verify(checkpoint)
    saved = read_metadata(checkpoint.path).state_dict_metadata
    wanted: dict[str, Any] = {}
    missing = []
    for name, tensor in model_state.items():
        entry = saved.get(f"{key}.{name}")
        if entry is None:
            missing.append(name)
            continue
        if tuple(entry.size) != tuple(tensor.size()):
            raise CheckpointError(
                f"checkpoint {checkpoint.path}: {key}.{name} has shape {tuple(entry.size)}, "
                f"the model has {tuple(tensor.size())}"
            )
        wanted[name] = tensor
    if not wanted:
        raise CheckpointError(f"checkpoint {checkpoint.path}: no {key} weights match this model")
    load_tensors(checkpoint.path, {key: wanted})
    logger.info("warm start: loaded %d weight tensors from %s", len(wanted), checkpoint.path)
    if missing:
        logger.warning("warm start: %d tensors are not in %s and keep their initial values: %s",
                       len(missing), checkpoint.path, ", ".join(missing[:10]))
    return checkpoint
