"""The training loop through torchrec's TrainPipelineSparseDist: chosen on CUDA for a DistributedModelParallel (and
never on CPU unless asked), refused with a reason where it cannot honour the loop, and, run on CPU with gloo where
it is asked for, the same training as the plain loop: weights, optimizer states, evaluation mid-run, checkpoints
and an exact resume."""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchrec.streamable import Pipelineable

sys.path.insert(0, str(Path(__file__).parent))
import toy_training as toy  # noqa: E402

from core.distributed import init_distributed, shutdown_distributed  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


@dataclass
class PipelineableToyBatch(toy.ToyBatch, Pipelineable):
    """The toy batch with what torchrec's pipeline asks of a batch (moving, stream recording)."""

    def to(self, device, non_blocking: bool = False) -> "PipelineableToyBatch":
        return PipelineableToyBatch(*(getattr(toy.ToyBatch.to(self, device, non_blocking), f.name)
                                      for f in dataclasses.fields(self)))

    def record_stream(self, stream) -> None:
        pass


class PipelineableToyData(toy.ToyData):
    def __iter__(self):
        for batch in super().__iter__():
            yield PipelineableToyBatch(batch.ids, batch.x, batch.labels, batch.weights)


def _evaluate(loop_ref: list):
    """An evaluation that calls the model outside the pipeline, on a fixed batch."""
    batch = PipelineableToyBatch(*dataclasses.astuple(toy.make_batch(999)))

    def evaluate(step, template):
        loss, _ = loop_ref[0].model(batch)
        return {"eval/loss": float(loss)}

    return evaluate


def _loop(ctx, save_dir: Path, pipelined: bool, steps: int, **training):
    loop_ref: list = []
    config = toy.training_config(save_dir, num_train_steps=steps, checkpoint_every_n=3, eval_every_n=4, **training)
    loop = toy.build_loop(ctx, config, data=PipelineableToyData(), evaluate=_evaluate(loop_ref), dropout=0.2)
    loop_ref.append(loop)
    loop.use_train_pipeline = pipelined
    return loop


def test_the_cpu_loop_keeps_its_plain_path(ctx, tmp_path):
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=2))
    assert loop.pipeline_problem() is None  # it could pipeline, but on CPU it is not asked to
    assert loop.run().step == 2
    assert loop._pipelined is None


def test_cuda_picks_the_pipeline_for_a_sharded_model(ctx, tmp_path):
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=2))
    loop.ctx = dataclasses.replace(ctx, device=torch.device("cuda", 0))
    assert loop._wants_pipeline()
    loop.use_train_pipeline = False
    assert not loop._wants_pipeline()


def test_cuda_falls_back_where_the_pipeline_cannot_honour_the_loop(ctx, tmp_path, caplog):
    accumulating = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=2,
                                                           gradient_accumulation_steps=2))
    accumulating.ctx = dataclasses.replace(ctx, device=torch.device("cuda", 0))
    with caplog.at_level("INFO", logger="core.train_pipeline"):
        assert not accumulating._wants_pipeline()
    assert "gradient_accumulation_steps > 1" in caplog.text
    accumulating.use_train_pipeline = True
    with pytest.raises(ValueError, match="gradient_accumulation_steps > 1"):
        accumulating._wants_pipeline()

    unsharded = toy.build_loop(ctx, toy.training_config(tmp_path / "b", num_train_steps=2))
    unsharded.model = torch.nn.Linear(2, 2)
    assert unsharded.pipeline_problem() == "the model is not a torchrec DistributedModelParallel"


def test_pipelined_training_is_the_plain_training(ctx, tmp_path):
    # 9 steps (6 batches per epoch: an epoch boundary inside the pipeline's look-ahead), evaluation at step 4 and 8
    # (the pipeline pauses with batches in flight), clipping, bf16 autocast and dropout.
    settings = dict(clip_grad_norm=0.5, mixed_precision="bf16")
    plain = _loop(ctx, tmp_path / "plain", False, 9, **settings)
    plain_result = plain.run()
    piped = _loop(ctx, tmp_path / "piped", True, 9, **settings)
    piped_result = piped.run()
    assert piped._pipelined is not None
    assert (piped_result.step, piped_result.epoch) == (plain_result.step, plain_result.epoch) == (9, 1)
    assert piped_result.last_eval_metrics == pytest.approx(plain_result.last_eval_metrics, abs=1e-6)
    assert piped_result.last_train_metrics["train/loss"] == pytest.approx(
        plain_result.last_train_metrics["train/loss"], abs=1e-6)
    toy.assert_same(toy.all_state(plain), toy.all_state(piped))
    # The model has its own forwards back after training.
    loss, _ = piped.model(PipelineableToyBatch(*dataclasses.astuple(toy.make_batch(5))))
    assert torch.isfinite(loss)


def test_a_pipelined_checkpoint_resumes_exactly(ctx, tmp_path):
    # The pipeline pulls batches ahead of training: the checkpoint must record the first batch not trained on.
    straight = _loop(ctx, tmp_path / "straight", True, 8)
    straight.run()
    first = _loop(ctx, tmp_path / "resumed", True, 5)
    assert first.run().step == 5
    second = _loop(ctx, tmp_path / "resumed", True, 8)
    result = second.run()
    assert result.resumed_from == tmp_path / "resumed" / "checkpoints" / "step_00000005"
    toy.assert_same(toy.all_state(straight), toy.all_state(second))
