"""Checkpoints on a disk or an object store: what a complete checkpoint is, and finding one.

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

A checkpoint is complete once its checkpoint.json exists: on a disk it is written just before the directory is
renamed into place, on an object store it is the last key written. Only complete checkpoints are listed or resolved,
and their files are checked against the manifest (verify_files) before anything is loaded.

Writing, keeping the last K and loading with fallback: core/checkpoint_manager.py. The tensors themselves (DCP, read
without unpickling arbitrary objects): core/checkpoint_dcp.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location

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


def read_json(path: StorePath, checkpoint: StorePath) -> dict[str, Any]:
    """The JSON object in a file of `checkpoint`; CheckpointError naming both when it is missing or not one."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {checkpoint}: {path.name} does not hold a JSON object")
    return data


def file_sha256(path: StorePath) -> str:
    """The sha256 of a file's content, hex (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        if check_hashes and i % world == rank and file_sha256(path / name) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {name} is corrupt (its sha256 does not match)")


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint.json of a complete checkpoint directory."""
    path = location(path)
    info = read_json(path / INFO_FILE, path)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {info.get('format_version')} is not {FORMAT_VERSION}")
    return info


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints (those with a checkpoint.json) in `directory`, oldest first."""
    directory = location(directory)
    found = []
    for child, step in step_dirs(directory):
        if (child / INFO_FILE).is_file():
            found.append(Checkpoint(child, step))
    return sorted(found, key=lambda c: c.step)


def step_dirs(directory: StorePath) -> list[tuple[StorePath, int]]:
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


def read_best(directory: str | os.PathLike | ObjectPath) -> dict[str, Any] | None:
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
