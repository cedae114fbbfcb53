"""core/checkpoint_dcp.py: refusal to unpickle anything but DCP metadata, and to write or read anything but tensors."""

import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_helpers as helpers  # noqa: E402

from core.checkpoint import CheckpointError, file_sha256  # noqa: E402
from core.checkpoint_dcp import read_metadata  # noqa: E402
from core.checkpoint_manager import CheckpointManager  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def _rewrite_manifest_entry(path: Path, name: str) -> None:
    """Make checkpoint.json describe the current bytes of `name` (to reach the checks behind the manifest)."""
    info = json.loads((path / "checkpoint.json").read_text())
    info["files"][name] = {"bytes": (path / name).stat().st_size, "sha256": file_sha256(path / name)}
    (path / "checkpoint.json").write_text(json.dumps(info))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_metadata_with_arbitrary_objects_is_refused_without_running_them(ctx, tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", ctx)
    checkpoint = helpers.save(manager, 1, helpers.model(1))
    marker = tmp_path / "exploited"
    (checkpoint.path / ".metadata").write_bytes(pickle.dumps(_Exploit(marker)))
    _rewrite_manifest_entry(checkpoint.path, ".metadata")
    with pytest.raises(CheckpointError, match=r"step_00000001: metadata refers to posix.system, which is not allowed"):
        manager.load(checkpoint, {"model": helpers.model(2).state_dict()})
    assert not marker.exists()


def test_non_tensor_entries_are_refused(ctx, tmp_path):
    dcp.save({"weights": torch.ones(2), "extra": {"note": "pickled object"}}, checkpoint_id=tmp_path)
    with pytest.raises(CheckpointError, match="not allowed|not tensors"):
        read_metadata(tmp_path)
    with pytest.raises(TypeError, match="only tensors"):
        CheckpointManager(tmp_path / "x", ctx).save(1, {"step": 3})
