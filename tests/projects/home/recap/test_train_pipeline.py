"""The recap ranker through torchrec's TrainPipelineSparseDist (asked for on CPU here; on CUDA it is the default):
the sharded tables and the id transform before them are pipelined, and training, evaluation mid-run and the
checkpoint are those of the plain loop."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from core.train_loop import TrainLoop  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def test_the_pipelined_recap_training_is_the_plain_one(ctx, tmp_path, monkeypatch):
    from projects.home.recap.train import train

    data_dir = helpers.make_data(tmp_path / "data")
    evaluation = {"eval_every_n": 3, "num_eval_steps": 2, "eval_datasets": "[validation]"}
    plain = train(helpers.config(data_dir, tmp_path / "plain", 7, **evaluation), ctx)

    pipelined: list[tuple[int, int]] = []  # (sharded modules pipelined, id transforms pipelined) per step
    step = TrainLoop._pipelined_step

    def recording_step(self):
        done = step(self)
        pipeline = self._pipelined.pipeline
        pipelined.append((len(pipeline._pipelined_modules), len(pipeline._pipelined_postprocs)))
        return done

    monkeypatch.setattr(TrainLoop, "_wants_pipeline", lambda self: self.pipeline_problem() is None)
    monkeypatch.setattr(TrainLoop, "_pipelined_step", recording_step)
    piped = train(helpers.config(data_dir, tmp_path / "piped", 7, **evaluation), ctx)

    assert pipelined and set(pipelined) == {(1, 1)}  # the table lookup and the id transform, every step
    assert piped.step == plain.step == 7
    assert piped.last_train_metrics["train/loss"] == pytest.approx(plain.last_train_metrics["train/loss"], abs=1e-5)
    assert piped.last_eval_metrics.keys() == plain.last_eval_metrics.keys()
    for key, value in plain.last_eval_metrics.items():
        assert piped.last_eval_metrics[key] == pytest.approx(value, abs=1e-5), key
    config = helpers.config(data_dir, tmp_path / "unused", 1)
    a = helpers.checkpoint_state(config, ctx, plain.checkpoint)
    b = helpers.checkpoint_state(config, ctx, piped.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{key} differs")
