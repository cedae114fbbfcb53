"""Every output on an object store, end to end against a real S3-protocol server (moto's, on localhost): 2 ranks
train with their data and training.save_dir on s3://, SIGTERM stops them mid-run with a checkpoint on the store, a
rerun resumes from it and ends exactly where an uninterrupted run ends; evaluate, predict and export then write
their reports, predictions and artifact there. Nothing is written to a local folder named after the URL."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[3]))
from s3_server import s3_server  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from core.storage import location  # noqa: E402

STEPS = 100  # the SIGTERM, sent once step 10 is logged, must come well before the end


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(server, bucket URL, the local data directory, its copy's URL on the store)."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        bucket = server.make_bucket("runs")
        data = helpers.make_data(tmp_path_factory.mktemp("data"))
        yield server, bucket, data, server.upload(data, f"{bucket}/data")


def _train_command(data_url: str, save_dir: str) -> list[str]:
    values = helpers.overrides(data_url, save_dir, STEPS, checkpoint_every_n=10_000, train_log_every_n=5)
    return [sys.executable, "-m", "projects.home.recap.main", "train", "--config", str(helpers.DEMO),
            "--nproc-per-node", "2", *helpers.set_args(values)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_ranks_train_on_the_store_stop_resume_and_score_there(store, tmp_path):
    server, bucket, data, data_url = store
    run = f"{bucket}/run"
    log = tmp_path / "stopped.log"
    with open(log, "w") as err:
        launcher = subprocess.Popen(_train_command(data_url, run), cwd=helpers.REPO, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while not re.search(rf"step \d\d+/{STEPS}", log.read_text()):
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 10"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    status = launcher.wait(timeout=180)
    text = log.read_text()
    assert status == 143, text[-3000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", text).group(1))
    assert [c.step for c in list_checkpoints(f"{run}/checkpoints")] == [step]
    run_dir = location(run)
    assert (run_dir / "config.yaml").is_file()
    assert not (run_dir / ".lock").exists()  # a stopped run gives its lease back
    assert any("tfevents" in p.name for p in (run_dir / "tensorboard").iterdir())

    rerun = helpers.recap(*_train_command(data_url, run)[3:], timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/step_{step:08d}" in rerun.stderr
    straight = helpers.recap(*_train_command(data_url, f"{bucket}/straight")[3:], timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    ctx = init_distributed("cpu")
    try:
        config = helpers.config(data, tmp_path / "unused", 1)
        a = helpers.checkpoint_state(config, ctx, f"{bucket}/straight")
        b = helpers.checkpoint_state(config, ctx, run)
    finally:
        shutdown_distributed()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")

    evaluated = helpers.recap("evaluate", "--run", run, "--dataset", "validation", timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = run_dir / "eval" / "validation" / f"step_{STEPS}"
    assert {"metrics.json", "report.html"} <= {p.name for p in report.iterdir()}

    predicted = helpers.recap("predict", "--run", run, "--input", f"{data_url}/test",
                              "--output", f"{bucket}/predictions", "--nproc-per-node", "2", timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    parts = sorted(p for p in location(f"{bucket}/predictions").iterdir() if p.name.endswith(".parquet"))
    assert [p.name for p in parts] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    rows = 0
    for part in parts:
        with part.open("rb") as f:
            rows += pq.read_table(f).num_rows
    assert rows == pq.read_table(data / "test").num_rows

    exported = helpers.recap("export", "--run", run, "--output", f"{bucket}/export", timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    from projects.home.recap.serving.artifact import ARTIFACT_FILES

    assert set(ARTIFACT_FILES) <= {p.name for p in location(f"{bucket}/export").iterdir()}

    assert not (helpers.REPO / "s3:").exists()  # no local folder named after the URL


@pytest.mark.slow
def test_a_second_run_on_the_same_store_save_dir_is_refused(store):
    server, bucket, data, data_url = store
    from core.run_lock import RunLock

    holder = RunLock(f"{bucket}/busy")
    holder.acquire()
    try:
        values = helpers.overrides(data_url, f"{bucket}/busy", 2)
        result = helpers.recap("train", "--config", str(helpers.DEMO), *helpers.set_args(values), timeout=300)
    finally:
        holder.release()
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"training.save_dir: {bucket}/busy is in use by another run (pid {os.getpid()}" in result.stderr


@pytest.mark.slow
def test_training_into_a_missing_bucket_is_one_line_naming_the_url(store):
    server, bucket, data, data_url = store
    values = helpers.overrides(data_url, "s3://no-such-bucket/run", 2)
    result = helpers.recap("train", "--config", str(helpers.DEMO), *helpers.set_args(values), timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("training.save_dir s3://no-such-bucket/run: cannot write there (s3://no-such-bucket/run/"
                           ".lock: "), result.stderr[-3000:]
    assert "the bucket does not exist" in last and "Traceback" not in result.stderr
