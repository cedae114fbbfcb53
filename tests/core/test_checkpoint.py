"""core/checkpoint.py: which step directories are complete checkpoints, the manifest's checks of their files, and
finding a checkpoint by its directory, a checkpoints directory or a run's save_dir."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_helpers as helpers  # noqa: E402

from core.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint  # noqa: E402
from core.checkpoint_manager import CheckpointManager  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def test_a_step_directory_without_its_info_file_is_not_a_checkpoint(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx)
    checkpoint = helpers.save(manager, 5, helpers.model(0))
    (checkpoint.path / "checkpoint.json").unlink()
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_corrupt_bytes_of_the_right_size_are_detected(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx)
    checkpoint = helpers.save(manager, 1, helpers.model(1))
    data = checkpoint.path / "__0_0.distcp"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"step_00000001: file __0_0.distcp is corrupt"):
        manager.load(checkpoint, {"model": helpers.model(2).state_dict()})


def test_resolve_checkpoint_accepts_a_step_a_checkpoints_dir_or_a_save_dir(ctx, tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", ctx)
    helpers.save(manager, 3, helpers.model(0))
    latest = helpers.save(manager, 9, helpers.model(0))
    assert resolve_checkpoint(tmp_path) == latest
    assert resolve_checkpoint(tmp_path / "checkpoints") == latest
    assert resolve_checkpoint(tmp_path / "checkpoints" / "step_00000003").step == 3
    with pytest.raises(CheckpointError, match=str(tmp_path / "nothing")):
        resolve_checkpoint(tmp_path / "nothing")
