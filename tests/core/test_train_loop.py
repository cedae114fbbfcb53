"""The training loop on a toy two-task model with a sharded embedding table: exact resume, accumulation, clipping,
bf16, schedules per group, non-finite losses, TensorBoard, evaluation and a real 2-process torchrun launch."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import toy_training as toy  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.checkpoint_manager import CheckpointManager  # noqa: E402
from core.config import ConfigError, load_config  # noqa: E402
from core.distributed import init_distributed, shutdown_distributed  # noqa: E402
from core.loss_window import NonFiniteLossError  # noqa: E402
from core.schedules import LinearRampToConstant, LinearRampToCosine, PiecewiseConstant  # noqa: E402
from core.stop_signals import TrainingStopped  # noqa: E402
from core.train_config import OptimizerConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed("cpu")
    yield context
    shutdown_distributed()


def test_resume_reproduces_the_straight_run_exactly(ctx, tmp_path):
    # 8 steps straight vs 5 steps, stop, resume to 8: the same weights, optimizer states and RNG-driven dropout.
    # Six batches per epoch, so the resumed part also crosses an epoch boundary.
    straight = toy.build_loop(ctx, toy.training_config(tmp_path / "a", num_train_steps=8), dropout=0.3)
    straight.run()

    first = toy.build_loop(ctx, toy.training_config(tmp_path / "b", num_train_steps=5), dropout=0.3)
    assert first.run().step == 5
    torch.manual_seed(1234)  # the resumed run must not depend on the state of the process
    second = toy.build_loop(ctx, toy.training_config(tmp_path / "b", num_train_steps=8, seed=0), dropout=0.3)
    result = second.run()
    assert result.resumed_from == tmp_path / "b" / "checkpoints" / "step_00000005"
    assert (result.step, result.epoch) == (8, 1)
    toy.assert_same(toy.all_state(straight), toy.all_state(second))


class _SignalAfter(toy.ToyData):
    """ToyData that sends this process `signum` while handing out batch number `after` (counted from 1)."""

    def __init__(self, signum: int, after: int) -> None:
        super().__init__()
        self.signum, self.after, self.handed = signum, after, 0

    def __iter__(self):
        for batch in super().__iter__():
            self.handed += 1
            if self.handed == self.after:
                os.kill(os.getpid(), self.signum)
            yield batch


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_checkpoints_the_step_and_a_rerun_finishes_like_a_straight_run(ctx, tmp_path, signum, status):
    handler_before = signal.getsignal(signum)
    straight = toy.build_loop(ctx, toy.training_config(tmp_path / "a", num_train_steps=8), dropout=0.3)
    straight.run()
    stopped = toy.build_loop(ctx, toy.training_config(tmp_path / "b", num_train_steps=8), dropout=0.3,
                             data=_SignalAfter(signum, after=3))
    with pytest.raises(TrainingStopped) as info:
        stopped.run()
    name = signal.Signals(signum).name
    assert (info.value.step, info.value.exit_status) == (3, status)
    assert str(info.value) == f"stopped by {name} at step 3; checkpoint {tmp_path / 'b' / 'checkpoints' / 'step_00000003'}"
    assert [c.step for c in list_checkpoints(tmp_path / "b" / "checkpoints")] == [3]
    assert signal.getsignal(signum) == handler_before  # the loop's handlers are gone once it stops
    rerun = toy.build_loop(ctx, toy.training_config(tmp_path / "b", num_train_steps=8), dropout=0.3)
    assert rerun.run().resumed_from == tmp_path / "b" / "checkpoints" / "step_00000003"
    toy.assert_same(toy.all_state(straight), toy.all_state(rerun))


def test_checkpoints_are_periodic_final_and_only_the_last_k_kept(ctx, tmp_path):
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=11, checkpoint_every_n=3, keep_last_k=2))
    result = loop.run()
    steps = [c.step for c in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [9, 11]
    assert result.checkpoint == tmp_path / "checkpoints" / "step_00000011"
    info = json.loads((result.checkpoint / "checkpoint.json").read_text())["info"]
    assert (info["step"], info["epoch"], info["examples"]) == (11, 1, 11 * 16)
    rank = json.loads((result.checkpoint / "rank_0.json").read_text())
    assert rank["data"] == {"epoch": 1, "position": 5}


def test_gradient_accumulation_equals_one_big_batch(ctx, tmp_path):
    class Halves(toy.ToyData):
        def __iter__(self):
            for batch in super().__iter__():
                for rows in (slice(0, 8), slice(8, 16)):
                    ids = toy.KeyedJaggedTensor(keys=["id"], values=batch.ids.values()[rows],
                                                lengths=batch.ids.lengths()[rows])
                    yield toy.ToyBatch(ids, batch.x[rows], batch.labels[rows], batch.weights[rows])

    big = toy.build_loop(ctx, toy.training_config(tmp_path / "big", num_train_steps=5), with_table=False)
    big.run()
    accumulated = toy.build_loop(
        ctx, toy.training_config(tmp_path / "acc", num_train_steps=5, gradient_accumulation_steps=2),
        data=Halves(), with_table=False,
    )
    accumulated.run()
    toy.assert_same(toy.parameters(big), toy.parameters(accumulated))


def test_epochs_with_a_partial_last_accumulation_window(ctx, tmp_path):
    # 2 epochs x 6 batches in windows of 5: updates after batches 5, 10 and 12.
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_epochs=2, gradient_accumulation_steps=5))
    result = loop.run()
    assert (result.step, result.epoch) == (3, 2)
    assert loop.examples == 12 * 16


def test_gradients_are_clipped_to_the_configured_norm(ctx, tmp_path):
    # The optimizer clips (inside its fused update; the maths are tested in test_optimizers.py): the loop hands it
    # the configured norm at every update and logs the norm before clipping.
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=3, clip_grad_norm=1e-3))
    norms = []
    step = loop.dense_optimizer.step

    def recording_step(clip_grad_norm=None):
        norm = step(clip_grad_norm=clip_grad_norm)
        norms.append((clip_grad_norm, norm.item()))
        return norm

    loop.dense_optimizer.step = recording_step
    result = loop.run()
    assert [clip for clip, _ in norms] == [1e-3] * 3
    assert all(norm > 1e-3 for _, norm in norms)
    assert result.last_train_metrics["train/grad_norm"] == pytest.approx(norms[-1][1], rel=1e-5)


def test_bf16_autocast_runs_the_layers_in_bfloat16(ctx, tmp_path):
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=2, mixed_precision="bf16"))
    dtypes = []
    shared = next(m for name, m in loop.model.named_modules() if name.endswith("shared"))
    shared.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    result = loop.run()
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert torch.isfinite(torch.tensor(result.last_train_metrics["train/loss"]))


def test_each_tower_follows_its_own_schedule(ctx, tmp_path):
    optim = toy.optimizer_config(learning_rate=None, multi_task_learning_rates={
        "backbone_learning_rate": {"constant": 0.001},
        "tower_learning_rates": {
            "click": {"linear_ramp_to_constant": {"learning_rate": 0.01, "num_ramp_steps": 10}},
            "like": {"piecewise_constant": {"boundaries": [3], "values": [0.02, 0.005]}},
        },
    })
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=4), optim=optim)
    seen = []
    step = loop.dense_optimizer.step

    def recording_step(clip_grad_norm=None):
        seen.append({g["name"]: g["lr"] for g in loop.dense_optimizer.optimizer.param_groups})
        return step(clip_grad_norm=clip_grad_norm)

    loop.dense_optimizer.step = recording_step
    loop.run()
    ramp, piecewise = LinearRampToConstant(0.01, 10), PiecewiseConstant((3,), (0.02, 0.005))
    assert seen == [{"shared": 0.001, "click": ramp(s), "like": piecewise(s)} for s in (1, 2, 3, 4)]
    assert [g["like"] for g in seen] == [0.02, 0.02, 0.005, 0.005]


def test_tower_names_must_match_the_model_tasks(ctx, tmp_path):
    optim = toy.optimizer_config(learning_rate=None, multi_task_learning_rates={
        "backbone_learning_rate": {"constant": 0.001},
        "tower_learning_rates": {"click": {"constant": 0.01}, "share": {"constant": 0.01}},
    })
    with pytest.raises(ConfigError, match=r"unknown \['share'\], missing \['like'\]"):
        toy.build_loop(ctx, toy.training_config(tmp_path), optim=optim)


def test_adam_weight_decay_is_coupled_and_adamw_decoupled(ctx, tmp_path):
    from core.optimizers import build_dense_optimizer

    for kind, expected in (("adam", 1.0 - 0.1 * 1.0), ("adamw", 1.0 - 0.1 * 0.5)):
        param = torch.nn.Parameter(torch.ones(1))
        model = torch.nn.Module()
        model.p = param
        config = load_config(None, OptimizerConfig, data={"dense": {
            kind: {"weight_decay": 0.5}, "learning_rate": {"constant": 0.1}}}).dense
        optimizer = build_dense_optimizer(model, {"shared": [param]}, config)
        param.grad = torch.zeros(1)
        optimizer.step()
        # Adam adds wd*p to the zero gradient, so its first step is -lr*sign(wd*p); AdamW shrinks p by lr*wd.
        assert param.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["rowwise_adagrad", "adagrad", "sgd", "adam"])
def test_sparse_optimizers_update_the_table(ctx, tmp_path, kind):
    optim = load_config(None, OptimizerConfig, data={"dense": {"adam": {}, "learning_rate": {"constant": 0.01}},
                                                     "sparse": {"type": kind, "learning_rate": 0.5}})
    loop = toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=2), optim=optim)
    before = toy.parameters(loop)["tables.embedding_bags.ids.weight"]
    loop.run()
    after = toy.parameters(loop)["tables.embedding_bags.ids.weight"]
    changed = set((before != after).any(dim=1).nonzero().flatten().tolist())
    data = toy.ToyData()
    data.set_epoch(0)
    seen = {i for batch, _ in zip(data, range(2)) for i in batch.ids.values().tolist()}
    assert changed == seen  # exactly the rows of the ids in the two batches moved


def test_sparse_sgd_moves_a_row_in_proportion_to_the_learning_rate(ctx, tmp_path):
    # One step from the same seeded start: the same gradient, so SGD's row deltas (-lr * grad) scale with lr.
    deltas = []
    for lr in (0.5, 1.5):
        optim = load_config(None, OptimizerConfig, data={"dense": {"adam": {}, "learning_rate": {"constant": 0.01}},
                                                         "sparse": {"type": "sgd", "learning_rate": lr}})
        loop = toy.build_loop(ctx, toy.training_config(tmp_path / str(lr), num_train_steps=1), optim=optim)
        before = toy.parameters(loop)["tables.embedding_bags.ids.weight"]
        loop.run()
        deltas.append(toy.parameters(loop)["tables.embedding_bags.ids.weight"] - before)
    moved = deltas[0].abs().sum(dim=1) > 0
    assert 0 < int(moved.sum()) <= 16  # the rows of the first batch's ids, and only those
    torch.testing.assert_close(deltas[1], 3.0 * deltas[0], rtol=1e-5, atol=1e-7)


def test_cosine_without_final_num_steps_reaches_its_final_rate_at_the_last_update_of_the_epochs(ctx, tmp_path):
    # 2 epochs x 6 batches in windows of 5: 3 updates, so the cosine runs from step 0 to step 3.
    optim = toy.optimizer_config(learning_rate={"linear_ramp_to_cosine": {
        "learning_rate": 0.04, "final_learning_rate": 0.001, "num_ramp_steps": 0}})
    config = toy.training_config(tmp_path, num_epochs=2, gradient_accumulation_steps=5)
    loop = toy.build_loop(ctx, config, optim=optim)
    seen = []
    step = loop.dense_optimizer.step

    def recording_step(clip_grad_norm=None):
        seen.append(loop.dense_optimizer.optimizer.param_groups[0]["lr"])
        return step(clip_grad_norm=clip_grad_norm)

    loop.dense_optimizer.step = recording_step
    assert loop.run().step == 3
    cosine = LinearRampToCosine(0.04, 0.001, 0, 3)
    assert seen == pytest.approx([cosine(1), cosine(2), 0.001])
    assert seen[1] > 0.001 * 2  # still decaying one update before the end


def test_non_finite_loss_stops_before_checkpointing_and_keeps_the_last_good_one(ctx, tmp_path):
    class PoisonedAt(toy.ToyData):
        def __iter__(self):
            for batch in super().__iter__():
                if self.epoch == 0 and self.position == 6:
                    batch.x[0, 0] = float("nan")
                yield batch

    config = toy.training_config(tmp_path, num_train_steps=10, checkpoint_every_n=4, train_log_every_n=100)
    loop = toy.build_loop(ctx, config, data=PoisonedAt())
    with pytest.raises(NonFiniteLossError, match=r"between steps 5 and 8.*step_00000004"):
        loop.run()
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4]
    CheckpointManager(tmp_path / "checkpoints", ctx).verify(list_checkpoints(tmp_path / "checkpoints")[0])


def test_tensorboard_has_per_task_losses_learning_rates_and_evaluation(ctx, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls = []

    def evaluate(step, template):
        calls.append((step, template.batch_size, torch.is_grad_enabled()))
        return {"eval/valid/loss/click": 0.5 + step, "eval/valid/loss/like": 0.25}

    config = toy.training_config(tmp_path, num_train_steps=6, train_log_every_n=2, eval_every_n=4)
    toy.build_loop(ctx, config, evaluate=evaluate).run()
    assert calls == [(4, 16, False), (6, 16, False)]  # every eval_every_n steps and at the end
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/loss/click", "train/loss/like", "train/learning_rate/shared",
                "train/learning_rate/click", "train/learning_rate/like", "train/examples_per_second",
                "train/examples_per_second/rank_0", "eval/valid/loss/click", "eval/valid/loss/like"}
    assert expected <= tags
    assert [e.step for e in events.Scalars("train/loss/click")] == [2, 4, 6]
    assert [(e.step, e.value) for e in events.Scalars("eval/valid/loss/click")] == [(4, 4.5), (6, 6.5)]


def test_warm_start_loads_weights_but_not_optimizer_state_or_step(ctx, tmp_path):
    source = toy.build_loop(ctx, toy.training_config(tmp_path / "source", num_train_steps=3))
    source.run()
    weights = toy.parameters(source)
    config = toy.training_config(tmp_path / "target", num_train_steps=1, warm_start_from=str(tmp_path / "source"),
                                 seed=7)
    target = toy.build_loop(ctx, config)
    assert target.restore() is None
    toy.assert_same(weights, toy.parameters(target))
    assert target.step == 0
    assert all((s["exp_avg"] == 0).all() for s in target.dense_optimizer.state_tensors().values())


@pytest.mark.slow
def test_two_process_torchrun_training_with_uneven_evaluation(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "train_loop_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(worker), str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # Rank 0 has 3 evaluation batches, rank 1 has 1: both ran 3 collective steps, rank 1 padded twice.
    assert report["eval_steps"] == {"0": [3, 3], "1": [3, 1]}
    assert report["step"] == 6
    # The table is model-parallel (not replicated): evaluation steps are collective.
    assert re.search(r"ids\s+\|\s+(table_wise|column_wise|table_column_wise|row_wise)\s", done.stderr)
    assert [c.step for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == [4, 6]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step_00000006").glob("rank_*.json")) == [
        "rank_0.json", "rank_1.json"]


def test_rank_zero_shows_a_progress_bar_on_a_terminal(ctx, tmp_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    toy.build_loop(ctx, toy.training_config(tmp_path, num_train_steps=4)).run()
    frames = terminal.getvalue().replace("\r", "\n")
    assert "train: 100%" in frames and "4/4" in frames and "loss=" in frames
