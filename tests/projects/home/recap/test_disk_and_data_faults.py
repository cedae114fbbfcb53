"""Training when its storage fails or its input is damaged: a disk that fills while a checkpoint is written, a
checkpoints directory made read-only mid-run, and a training file whose data pages are corrupt (parquet, and a zeroed
block in the prepared layout). After each: one error line naming the path, the previous checkpoint intact and
loadable, nothing half-written ever loaded, and a rerun that resumes from the previous checkpoint."""

import errno
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import CheckpointError, list_checkpoints  # noqa: E402
from core.checkpoint_manager import CheckpointManager  # noqa: E402
from projects.home.recap.data.errors import DataError  # noqa: E402

data_dir, ctx = helpers.data_dir, helpers.ctx  # the module's fixtures

STEPS = 6  # checkpoints every 2 steps; the fault hits the checkpoint of step 4


def _config(data: Path, save_dir: Path, steps: int = STEPS):
    return helpers.config(data, save_dir, steps, checkpoint_every_n=2, keep_last_k=10)


@pytest.fixture(scope="module")
def reference(data_dir, ctx, tmp_path_factory):
    """The checkpoints of an uninterrupted run to step 6: what the runs resumed after a fault must end with."""
    from projects.home.recap.train import train

    save_dir = tmp_path_factory.mktemp("reference")
    train(_config(data_dir, save_dir), ctx)
    return save_dir / "checkpoints"


def _assert_resumes_exactly(data: Path, ctx, save_dir: Path, reference: Path) -> None:
    """A rerun (no fault now) resumes from step 2 and ends with the uninterrupted run's state."""
    from projects.home.recap.train import train

    result = train(_config(data, save_dir), ctx)
    assert (result.step, result.resumed_from) == (STEPS, save_dir / "checkpoints" / "step_00000002")
    assert not list((save_dir / "checkpoints").glob(".step_*.partial"))
    expected = helpers.checkpoint_state(_config(data, reference.parent), ctx, reference / "step_00000006")
    found = helpers.checkpoint_state(_config(data, save_dir), ctx, save_dir / "checkpoints" / "step_00000006")
    assert found.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6, msg=f"{key} differs")


def _assert_intact(ctx, checkpoints: Path, step: int) -> None:
    """Only `step` is complete, its files match the manifest written with it, and no partial one is left over."""
    assert [c.step for c in list_checkpoints(checkpoints)] == [step]
    CheckpointManager(checkpoints, ctx).verify(list_checkpoints(checkpoints)[0])  # sizes and sha256 of every file
    assert not list(checkpoints.glob(".step_*.partial")), "a half-written checkpoint was left behind"


# --- a full disk while a checkpoint is written -----------------------------------------------------------------------
@pytest.mark.parametrize("full_at", ["__0_0.distcp", "checkpoint.json.tmp"])  # the first file written, the last
def test_a_disk_that_fills_during_a_checkpoint_is_one_error_and_the_previous_checkpoint_serves(
        data_dir, ctx, reference, tmp_path, monkeypatch, full_at):
    from projects.home.recap.train import train

    # Every file of a checkpoint is flushed (fsync) before the checkpoint is made visible, and that is where a full
    # disk reports itself at the latest: flushing `full_at` into step 4's partial directory fails with ENOSPC.
    fsync, failed = os.fsync, []

    def full_disk(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name == full_at and path.parent.name == ".step_00000004.partial":
            failed.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError) as raised:
        train(_config(data_dir, tmp_path), ctx)
    assert len(failed) == 1
    message = str(raised.value)
    assert "\n" not in message  # `recap train` logs it as its one error line and exits 1
    assert message.startswith(f"cannot write checkpoint {checkpoints / 'step_00000004'} (") and \
        "No space left on device" in message, message
    _assert_intact(ctx, checkpoints, 2)
    monkeypatch.undo()
    _assert_resumes_exactly(data_dir, ctx, tmp_path, reference)


def test_a_partial_checkpoint_is_never_loaded_even_when_all_its_files_are_there(data_dir, ctx, reference, tmp_path):
    # What a run killed between writing checkpoint.json and the rename leaves: a complete-looking step 4 under the
    # partial name. The rerun resumes from step 2 and clears it away.
    from projects.home.recap.train import train

    train(_config(data_dir, tmp_path, 4), ctx)
    checkpoints = tmp_path / "checkpoints"
    shutil.move(checkpoints / "step_00000004", checkpoints / ".step_00000004.partial")
    _assert_resumes_exactly(data_dir, ctx, tmp_path, reference)


# --- a checkpoints directory that becomes read-only mid-run ----------------------------------------------------------
def test_a_read_only_checkpoints_directory_mid_run_is_one_error_and_loses_nothing(data_dir, ctx, reference, tmp_path,
                                                                                   monkeypatch):
    from projects.home.recap.train import train

    checkpoints = tmp_path / "checkpoints"
    save = CheckpointManager.save

    def read_only_after_step_2(self, step, *args, **kwargs):
        written = save(self, step, *args, **kwargs)
        if step == 2:
            _make_read_only(checkpoints, monkeypatch)
        return written

    monkeypatch.setattr(CheckpointManager, "save", read_only_after_step_2)
    try:
        with pytest.raises(CheckpointError) as raised:
            train(_config(data_dir, tmp_path), ctx)
    finally:
        checkpoints.chmod(0o755)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write checkpoint {checkpoints / 'step_00000004'} (PermissionError: ") and \
        "Permission denied" in message, message
    _assert_intact(ctx, checkpoints, 2)
    monkeypatch.undo()
    _assert_resumes_exactly(data_dir, ctx, tmp_path, reference)


def _make_read_only(directory: Path, monkeypatch) -> None:
    """chmod 555 `directory`. Root writes through the mode bits (CAP_DAC_OVERRIDE), so where a probe shows that, the
    kernel's refusal is played instead: creating a directory in it (what a checkpoint does first) raises EACCES."""
    directory.chmod(0o555)
    probe = directory / ".probe"
    try:
        probe.mkdir()
    except PermissionError:
        return
    probe.rmdir()
    mkdir = os.mkdir

    def refused(path, *args, **kwargs):
        if Path(path).parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)


def _load_config(values: list[str]):
    from projects.home.recap.schema import load_recap_config

    return load_recap_config(helpers.DEMO, values)


# --- a corrupt training file met mid-epoch ----------------------------------------------------------------------------
# The data's seeded order first reads the second training file's row group (record batch) 2 for step 9: after the
# checkpoints of steps 4 and 8 (checkpoint_every_n 4), before the last step.
STEPS_TO_FAULT = 12


def _zero_data_pages(path: Path) -> bytes:
    """Zero everything between the leading magic and the footer: the schema and row-group sizes still read (the scan
    before training passes), every page header does not. Returns the original bytes."""
    original = path.read_bytes()
    footer = struct.unpack("<i", original[-8:-4])[0]
    end = len(original) - 8 - footer
    path.write_bytes(original[:4] + bytes(end - 4) + original[end:])
    return original


@pytest.mark.slow
def test_a_corrupt_parquet_file_met_mid_epoch_is_one_error_line_exit_1_and_the_run_resumes(ctx, tmp_path):
    # The real command, with a loader worker.
    from projects.home.recap.train import train

    data = helpers.make_data(tmp_path / "data")
    damaged = sorted((data / "train").glob("*.parquet"))[1]  # its footer reads: the scan before training passes
    good = _zero_data_pages(damaged)
    values = helpers.overrides(data, tmp_path / "run", STEPS_TO_FAULT, checkpoint_every_n=4, keep_last_k=10)
    values.append("data.num_workers=1")
    done = helpers.recap("train", "--config", str(helpers.DEMO), *helpers.set_args(values))
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"file {damaged}: row group " in errors[0] and "cannot be read (Couldn't deserialize thrift" in errors[0]
    assert errors[0].endswith(")"), done.stderr[-3000:]  # the whole message on that line (arrow's spans several)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [c.step for c in list_checkpoints(checkpoints)] == [4, 8]
    CheckpointManager(checkpoints, ctx).verify(list_checkpoints(checkpoints)[-1])
    damaged.write_bytes(good)  # the user restores the file and reruns
    result = train(_load_config(values), ctx)
    assert (result.step, result.resumed_from) == (STEPS_TO_FAULT, checkpoints / "step_00000008")


def test_a_zeroed_block_in_a_prepared_file_met_mid_epoch_is_a_data_error_after_the_last_checkpoint(data_dir, ctx,
                                                                                                   tmp_path):
    # Same size, other bytes: only the checksums written by `recap data prepare` can tell.
    from projects.home.recap.data.preparing import prepare
    from projects.home.recap.train import train

    prepared = tmp_path / "prepared"
    prepare(_config(data_dir, tmp_path).data, str(data_dir / "train"), str(prepared))
    values = helpers.overrides(data_dir, tmp_path / "run", STEPS_TO_FAULT, checkpoint_every_n=4, keep_last_k=10)
    values.append(f"data.train.paths=[{prepared}]")
    damaged = sorted(prepared.glob("*.arrow"))[1]
    good = damaged.read_bytes()
    content = bytearray(good)
    # Inside record batch 2 of 4 (the rows the parquet test finds read first after step 8), among its values.
    start = len(content) * 5 // 8 // 4096 * 4096
    assert any(content[start:start + 4096])
    content[start:start + 4096] = bytes(4096)
    damaged.write_bytes(bytes(content))
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(DataError) as raised:
        train(_load_config(values), ctx)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"file {damaged}, column "), message
    assert "record batch 2 does not match its checksum in the manifest: the prepared file is damaged; remove it and " \
           "run `recap data prepare` again" in message, message
    assert [c.step for c in list_checkpoints(checkpoints)] == [4, 8]
    CheckpointManager(checkpoints, ctx).verify(list_checkpoints(checkpoints)[-1])
    # What the error says to do: remove the file and prepare again (the source is unchanged; the rest is kept).
    damaged.unlink()
    prepare(_config(data_dir, tmp_path).data, str(data_dir / "train"), str(prepared))
    assert damaged.read_bytes() == good
    result = train(_load_config(values), ctx)
    assert (result.step, result.resumed_from) == (STEPS_TO_FAULT, checkpoints / "step_00000008")
