"""core/checkpoint_manager.py: atomic visibility, keep-last-K, verification of truncated files with fallback to the
previous checkpoint, a checkpoint of another model never moved aside, and warm start of weights."""

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_helpers as helpers  # noqa: E402

from core.checkpoint import CheckpointError, CheckpointMismatchError  # noqa: E402
from core.checkpoint_manager import CheckpointManager, load_model_weights  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def test_save_and_load_round_trip(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx)
    saved = helpers.model(0)
    checkpoint = helpers.save(manager, 7, saved)
    assert checkpoint.path == tmp_path / "step_00000007"
    assert sorted(p.name for p in checkpoint.path.iterdir()) == [
        ".metadata", "__0_0.distcp", "checkpoint.json", "rank_0.json"]
    loaded = helpers.model(1)
    state = {"model": loaded.state_dict()}
    info, rank_info = manager.load(checkpoint, state)
    loaded.load_state_dict(state["model"])
    for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert info == {"step": 7}
    assert rank_info == {"position": 70}


def test_only_the_last_k_complete_checkpoints_are_kept(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx, keep_last_k=2)
    for step in (1, 2, 3, 4):
        helpers.save(manager, step, helpers.model(step))
    assert [c.step for c in manager.complete()] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000004"]


def test_a_crash_while_writing_never_leaves_a_visible_checkpoint(ctx, tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, ctx)
    helpers.save(manager, 1, helpers.model(1))
    real_save = dcp.save

    def crash_after_writing(state, **kwargs):
        real_save(state, **kwargs)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(dcp, "save", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        helpers.save(manager, 2, helpers.model(2))
    assert (tmp_path / ".step_00000002.partial" / ".metadata").exists()
    assert [c.step for c in manager.complete()] == [1]
    assert manager.latest().step == 1
    monkeypatch.setattr(dcp, "save", real_save)
    helpers.save(manager, 3, helpers.model(3))
    assert not (tmp_path / ".step_00000002.partial").exists()  # cleaned up by the next successful save


def test_truncated_checkpoint_is_named_and_the_previous_one_is_used(ctx, tmp_path, caplog):
    manager = CheckpointManager(tmp_path, ctx)
    good = helpers.model(1)
    helpers.save(manager, 1, good)
    bad = helpers.save(manager, 2, helpers.model(2))
    data = bad.path / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step_00000002: file __0_0.distcp has 100 bytes, \d+ were written"):
        manager.load(bad, {"model": helpers.model(3).state_dict()})
    target = helpers.model(3)
    state = {"model": target.state_dict()}
    checkpoint, info, _ = manager.load_latest(state)
    assert checkpoint.step == 1 and info == {"step": 1}
    assert "step_00000002" in caplog.text and "falling back" in caplog.text
    target.load_state_dict(state["model"])
    assert torch.equal(target[0].weight, good[0].weight)
    assert (tmp_path / "step_00000002.corrupt").is_dir()
    assert manager.latest().step == 1


def _truncate(checkpoint) -> None:
    data = checkpoint.path / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])


def test_when_every_checkpoint_is_broken_training_stops_instead_of_starting_over(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx)
    for step in (1, 2):
        _truncate(helpers.save(manager, step, helpers.model(step)))
    state = {"model": helpers.model(3).state_dict()}
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* was rejected:\n  step_00000002: .*100 bytes"
                                              r".*\n  step_00000001: [\s\S]*--start-over"):
        manager.load_latest(state)
    assert [c.step for c in manager.complete()] == [1, 2]  # nothing moved
    assert manager.load_latest(state, start_over=True) is None
    assert manager.complete() == [] and (tmp_path / "step_00000001.corrupt").is_dir()


def test_a_step_directory_without_its_checkpoint_json_is_reported(ctx, tmp_path, caplog):
    manager = CheckpointManager(tmp_path, ctx)
    helpers.save(manager, 1, helpers.model(1))
    (tmp_path / "step_00000002").mkdir()
    with caplog.at_level("WARNING"):
        checkpoint, _, _ = manager.load_latest({"model": helpers.model(2).state_dict()})
    assert checkpoint.step == 1
    assert "step_00000002 has no checkpoint.json: not a complete checkpoint, ignored" in caplog.text


def test_a_checkpoint_of_another_model_is_a_clear_mismatch_and_is_never_moved_aside(ctx, tmp_path):
    manager = CheckpointManager(tmp_path, ctx)
    helpers.save(manager, 1, helpers.model(1))
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    with pytest.raises(CheckpointMismatchError, match=r"step_00000001 does not fit this run's model .*: "
                                                      r"model.0.weight has shape \(4, 3\), this run has \(5, 3\)"):
        manager.load_latest({"model": other.state_dict()})
    with pytest.raises(CheckpointMismatchError, match=r"model.extra is not in it"):
        manager.load_latest({"model": {**helpers.model(2).state_dict(), "extra": torch.zeros(2)}})
    assert [c.step for c in manager.complete()] == [1]


def test_warm_start_loads_matching_weights_and_rejects_shape_mismatches(ctx, tmp_path, caplog):
    source = helpers.model(1)
    helpers.save(CheckpointManager(tmp_path / "checkpoints", ctx), 4, source)
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.Linear(2, 1))
    state = target.state_dict()
    load_model_weights(tmp_path, state, ctx)
    target.load_state_dict(state)
    assert torch.equal(target[2].weight, source[2].weight)
    assert "3.weight" in caplog.text  # the new layer keeps its initial values, and the log says so
    wider = nn.Sequential(nn.Linear(3, 5))
    with pytest.raises(CheckpointError, match=r"model.0.weight has shape \(4, 3\), the model has \(5, 3\)"):
        load_model_weights(tmp_path, wider.state_dict(), ctx)


def test_a_checkpoint_that_cannot_be_written_is_one_clear_error(ctx, tmp_path):
    (tmp_path / "taken").write_text("a file where the checkpoints directory should be")
    manager = CheckpointManager(tmp_path / "taken", ctx)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*taken/step_00000003 \(NotADirectoryError: "
                                              r".*\); the previous checkpoints are untouched"):
        helpers.save(manager, 3, helpers.model(1))
