"""CheckpointManager: numbered checkpoints saved by every rank and made visible only when complete, the last K kept
(and the best one of model selection), the newest one that verifies loaded (falling back past broken ones); and
load_model_weights, the warm start from another run's checkpoint. The layout and the listing: core/checkpoint.py.

On a disk a checkpoint is written under .step_N.partial/ and renamed to step_N/ once its checkpoint.json is written.
On an object store (save_dir s3://..., gs://...; core/storage.py) there is no rename: a checkpoint is written in place
under step_N/ through DCP's fsspec writer, each rank its own shards, and checkpoint.json is written last, by rank 0
once every rank has finished: it is the "complete" marker, so a checkpoint interrupted mid-write (no checkpoint.json)
is never listed, never loaded, and deleted at the next save. Removing a checkpoint deletes its whole prefix. The
manifest's hashes are computed by all ranks, each over its share of the files, on a disk and a store alike.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from core.checkpoint import (
    BEST_FILE,
    FORMAT_VERSION,
    INFO_FILE,
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    StorePath,
    file_sha256,
    file_sizes,
    list_checkpoints,
    read_best,
    read_info,
    read_json,
    resolve_checkpoint,
    step_dirs,
    verify_files,
)
from core.checkpoint_dcp import (
    check_tensors_only,
    describe_failure,
    load_tensors,
    read_metadata,
    save_tensors,
)
from core.distributed import DistributedContext, barrier
from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location
from core.storage_ops import move_tree, rmtree, write_atomic

logger = get_logger(__name__)


# --- the files of a checkpoint being written --------------------------------------------------------------
def _write_json(path: StorePath, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


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


def _manifest(directory: StorePath, ctx: DistributedContext) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a checkpoint being written (collective: each rank hashes its share of the
    files, so no rank reads the whole checkpoint back; the result is complete on rank 0)."""
    sizes = {name: size for name, size in file_sizes(directory).items()
             if name != INFO_FILE and not name.endswith(".tmp")}
    names = sorted(sizes)
    share = {name: file_sha256(directory / name) for name in names[ctx.rank::ctx.world_size]}
    hashes = _gather(share, ctx)
    return {name: {"bytes": sizes[name], "sha256": hashes.get(name)} for name in names}


def _gather(share: dict[str, str], ctx: DistributedContext) -> dict[str, str]:
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return share
    shares: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(shares, share)
    return {name: digest for part in shares for name, digest in part.items()}


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
        check_tensors_only(tensors)
        final = self.path_for(step)
        remote = isinstance(final, ObjectPath)
        # On an object store the checkpoint is written in place: without its checkpoint.json it is never loaded.
        partial = final if remote else self.directory / f".{final.name}.partial"
        try:
            return self._save(step, final, partial, tensors, info, rank_info)
        except (OSError, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
            if self.ctx.is_main:
                # Never loaded either way (not a step_N name), but a full disk is the likely cause: give its space back.
                rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final} ({describe_failure(exc)}); the previous checkpoints are "
                                  "untouched") from exc

    def _save(self, step: int, final: StorePath, partial: StorePath, tensors: dict[str, Any],
              info: Mapping[str, Any] | None, rank_info: Mapping[str, Any] | None) -> Checkpoint:
        remote = isinstance(final, ObjectPath)
        if self.ctx.is_main:
            if remote:
                rmtree(final)  # an interrupted write of this step, or the same step saved again
            else:
                if partial.exists():
                    shutil.rmtree(partial)
                partial.mkdir(parents=True)
        barrier(self.ctx)
        save_tensors(partial, tensors)
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
                rmtree(old.path, ignore_errors=True)
        if isinstance(self.directory, ObjectPath):
            # Interrupted writes: no other write runs now (rank 0 prunes after a save, under the save_dir lock).
            for stale in self._without_info():
                rmtree(stale, ignore_errors=True)
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
            rank_info = read_json(checkpoint.path / f"rank_{self.ctx.rank}.json", checkpoint.path)
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
        return sorted(p for p, _ in step_dirs(self.directory) if not (p / INFO_FILE).is_file())

    def _move_aside(self, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:  # every rank holds the same list: verification is collective
            return
        barrier(self.ctx)
        if self.ctx.is_main:
            for checkpoint in checkpoints:
                aside = checkpoint.path.with_name(checkpoint.path.name + ".corrupt")
                rmtree(aside, ignore_errors=True)
                move_tree(checkpoint.path, aside)
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
