"""The object-store side of core/storage.py, core/object_path.py, core/storage_ops.py and core/storage_retries.py,
and their writers, against a real S3-protocol server (moto's, on localhost; tests/s3_server.py): object paths,
checkpoints written in place with their complete marker, interrupted checkpoints, keep-last-K and best pruning whole
prefixes, the save_dir lease, TensorBoard uploads, and the one-line errors and retries."""

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))
from s3_server import s3_server  # noqa: E402

from core import storage_ops, storage_retries  # noqa: E402
from core.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint  # noqa: E402
from core.checkpoint_manager import CheckpointManager  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from core.object_path import ObjectPath, filesystem  # noqa: E402
from core.run_lock import LeaseLock, RunLock, RunLockedError  # noqa: E402
from core.storage import location  # noqa: E402
from core.storage_retries import StorageError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as s3:
        yield s3


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


_count = iter(range(10**6))


@pytest.fixture
def bucket(server):
    """A fresh bucket per test."""
    return server.make_bucket(f"test-{next(_count)}")


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _save(manager: CheckpointManager, step: int, model: nn.Module):
    return manager.save(step, {"model": model.state_dict()}, info={"step": step}, rank_info={"position": step})


def test_object_paths_read_write_list_and_remove(bucket):
    root = location(f"{bucket}/run")
    assert isinstance(root, ObjectPath) and not root.exists()
    (root / "a.json").write_text('{"x": 1}')
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert json.loads((root / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in root.iterdir()] == ["a.json", "sub"]
    assert (root / "sub").is_dir() and (root / "a.json").is_file()
    assert (root / "sub" / "b.bin").stat().st_size == 2
    storage_ops.move_tree(root / "sub", root / "moved")
    assert (root / "moved" / "b.bin").read_bytes() == b"\x00\x01" and not (root / "sub").exists()
    storage_ops.rmtree(root)
    assert list(root.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        (root / "a.json").read_bytes()


def test_checkpoints_round_trip_on_the_store(ctx, bucket):
    directory = f"{bucket}/run/checkpoints"
    manager = CheckpointManager(directory, ctx, keep_last_k=2)
    model = _model(1)
    saved = _save(manager, 3, model)
    assert str(saved.path) == f"{directory}/step_00000003"
    names = {p.name for p in saved.path.iterdir()}
    assert {"checkpoint.json", ".metadata", "rank_0.json"} <= names and any(n.endswith(".distcp") for n in names)
    info = json.loads((saved.path / "checkpoint.json").read_text())
    assert set(info["files"]) == names - {"checkpoint.json"}  # the manifest covers every shard
    target = _model(2)
    state = {"model": target.state_dict()}
    checkpoint, loaded_info, rank_info = CheckpointManager(directory, ctx).load_latest(state)
    target.load_state_dict(state["model"])
    assert checkpoint.step == 3 and loaded_info == {"step": 3} and rank_info == {"position": 3}
    for a, b in zip(model.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    assert resolve_checkpoint(f"{bucket}/run").path == saved.path  # a run's save_dir on the store


def test_keep_last_k_and_the_best_checkpoint_remove_whole_prefixes(ctx, bucket):
    directory = location(f"{bucket}/checkpoints")
    manager = CheckpointManager(directory, ctx, keep_last_k=2)
    _save(manager, 1, _model(1))
    manager.mark_best({"best_step": 1})
    for step in (2, 3, 4):
        _save(manager, step, _model(step))
    assert [c.step for c in list_checkpoints(directory)] == [1, 3, 4]  # 1 is the best, 3 and 4 the last two
    assert not list((directory / "step_00000002").iterdir())  # nothing of step 2 is left on the store


def test_a_checkpoint_interrupted_mid_write_is_skipped_and_deleted_at_the_next_save(ctx, bucket, monkeypatch,
                                                                                     caplog):
    directory = location(f"{bucket}/checkpoints")
    manager = CheckpointManager(directory, ctx)
    _save(manager, 1, _model(1))
    real_save = dcp.save

    def killed_after_the_shards(state, **kwargs):
        real_save(state, **kwargs)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(dcp, "save", killed_after_the_shards)
    with pytest.raises(KeyboardInterrupt):
        _save(manager, 2, _model(2))
    interrupted = directory / "step_00000002"
    assert (interrupted / ".metadata").exists() and not (interrupted / "checkpoint.json").exists()
    assert [c.step for c in manager.complete()] == [1]
    state = {"model": _model(9).state_dict()}
    checkpoint, _, _ = CheckpointManager(directory, ctx).load_latest(state)
    assert checkpoint.step == 1
    assert "step_00000002 has no checkpoint.json: not a complete checkpoint, ignored" in caplog.text
    monkeypatch.setattr(dcp, "save", real_save)
    _save(manager, 3, _model(3))
    assert not interrupted.exists()


def test_a_corrupt_shard_on_the_store_is_detected(ctx, bucket):
    directory = location(f"{bucket}/checkpoints")
    manager = CheckpointManager(directory, ctx)
    saved = _save(manager, 1, _model(1))
    shard = next(p for p in saved.path.iterdir() if p.name.endswith(".distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt"):
        manager.verify(saved)


# --- the save_dir lease ----------------------------------------------------------------------------------------------
def test_a_second_run_finds_the_lease_and_gets_the_usual_error(bucket):
    first = RunLock(f"{bucket}/run")
    assert isinstance(first, LeaseLock)
    first.acquire()
    try:
        record = json.loads((location(f"{bucket}/run") / ".lock").read_text())
        assert {"host", "pid", "started", "expires"} <= set(record)
        with pytest.raises(RunLockedError, match=rf"{bucket}/run is in use by another run \(pid \d+ on .*choose "
                                                 "another training.save_dir"):
            RunLock(f"{bucket}/run").acquire()
    finally:
        first.release()
    assert not (location(f"{bucket}/run") / ".lock").exists()
    second = RunLock(f"{bucket}/run")
    second.acquire()  # free again once released
    second.release()


def test_the_lease_is_renewed_and_taken_over_only_after_expiry(bucket, caplog):
    save_dir = location(f"{bucket}/run")
    holder = LeaseLock(save_dir, lease_seconds=3.0, renew_seconds=0.5)
    holder.acquire()
    first_expiry = json.loads((save_dir / ".lock").read_text())["expires"]
    time.sleep(4.0)  # past the first expiry: only the renewals keep it
    assert json.loads((save_dir / ".lock").read_text())["expires"] > first_expiry
    with pytest.raises(RunLockedError):
        LeaseLock(save_dir, lease_seconds=3.0).acquire()
    # The holder dies without releasing (its renewals stop): the lease is taken over once it has expired.
    holder._stop.set()
    holder._thread.join()
    with pytest.raises(RunLockedError):
        LeaseLock(save_dir, lease_seconds=3.0).acquire()
    time.sleep(3.5)
    successor = LeaseLock(save_dir, lease_seconds=3.0)
    successor.acquire()
    assert "taking over the lease" in caplog.text
    assert json.loads((save_dir / ".lock").read_text())["token"] == successor.token
    successor.release()


# --- TensorBoard -----------------------------------------------------------------------------------------------------
def test_tensorboard_events_are_uploaded_and_read_back(bucket):
    from core.report.tensorboard import read_training_scalars
    from core.tensorboard import MetricsWriter
    from projects.home.recap.eval_report import training_scalars

    writer = MetricsWriter(f"{bucket}/run/tensorboard")
    writer.scalars({"train/loss": 0.5}, 1)
    writer.flush()
    events = [p for p in location(f"{bucket}/run/tensorboard").iterdir() if "tfevents" in p.name]
    assert len(events) == 1
    writer.scalars({"train/loss": 0.25}, 2)
    writer.close()
    assert training_scalars(location(f"{bucket}/run"))["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert read_training_scalars  # the same reader as for a local run


# --- errors and retries ----------------------------------------------------------------------------------------------
def test_a_missing_bucket_is_one_line_naming_the_url(server):
    with pytest.raises(StorageError) as err:
        location("s3://no-such-bucket/run/config.yaml").write_text("x")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("s3://no-such-bucket/run/config.yaml: writing failed: the bucket does not exist")


def test_missing_credentials_are_one_line_naming_the_url(bucket, monkeypatch):
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError) as err:
            location(f"{bucket}/run/x").write_text("x")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{bucket}/run/x: writing failed: no credentials found")


def test_commands_end_with_the_one_line_error(server, tmp_path):
    env = {**server.env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "projects.home.recap.main", "data", "generate-small", "--rows",
                             "20", "--output", "s3://no-such-bucket/data"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recap data generate-small: s3://no-such-bucket/data/"), result.stderr[-2000:]
    assert "the bucket does not exist" in last and "Traceback" not in result.stderr


def test_a_transient_5xx_is_retried_with_backoff_and_logged(bucket, monkeypatch, caplog):
    """s3fs raises OSError(EBUSY) for a 503 SlowDown that outlasted its own retries: wrap the client so the first
    two PUTs fail that way."""
    monkeypatch.setattr(storage_retries, "BACKOFF_SECONDS", 0.01)
    fs = filesystem("s3")
    real = fs.pipe_file
    failures = []

    def flaky_pipe_file(path, data, **kwargs):
        if len(failures) < 2:
            failures.append(path)
            raise OSError(errno.EBUSY, "Please reduce your request rate. (SlowDown)")
        return real(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", flaky_pipe_file)
    target = location(f"{bucket}/run/config.yaml")
    target.write_text("a: 1\n")
    assert target.read_text() == "a: 1\n" and len(failures) == 2
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert retries[0].startswith(f"{target}: writing failed (OSError: [Errno 16] Please reduce your request rate")
    assert "retry 1 of 4" in retries[0] and "retry 2 of 4" in retries[1]


def test_staged_output_uploads_only_on_success(bucket):
    with storage_ops.staged_output(f"{bucket}/out") as local:
        (local / "a" / "b.txt").parent.mkdir(parents=True)
        (local / "a" / "b.txt").write_text("b")
    assert (location(f"{bucket}/out") / "a" / "b.txt").read_text() == "b"
    with pytest.raises(RuntimeError), storage_ops.staged_output(f"{bucket}/failed") as local:
        (local / "x").write_text("x")
        raise RuntimeError("the command failed")
    assert not location(f"{bucket}/failed").exists()


def test_warm_start_from_a_checkpoint_on_the_store(ctx, bucket):
    from core.checkpoint_manager import load_model_weights

    source = _model(4)
    _save(CheckpointManager(f"{bucket}/old/checkpoints", ctx), 7, source)
    target = _model(5)
    state = target.state_dict()
    found = load_model_weights(f"{bucket}/old", state, ctx)
    assert found.step == 7
    for a, b in zip(source.state_dict().values(), state.values()):
        assert torch.equal(a, b)
