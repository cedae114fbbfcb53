"""core/loss_window.py on one rank: the window's sums, the scalars and the console line made of them, a non-finite
loss raised when the window is read, and batch sizes. Over two ranks, and stopping before a checkpoint records a
non-finite loss: test_train_loop.py."""

import math

import pytest
import torch

from core.distributed import DistributedContext
from core.loss_window import LossWindow, NonFiniteLossError

ONE_RANK = DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")


def _window_of(losses: list[float], task_losses: list[list[float]], rows: int = 4) -> LossWindow:
    window = LossWindow(2, torch.device("cpu"), first_step=5)
    for loss, tasks in zip(losses, task_losses):
        window.account(torch.ones(rows, 3), torch.tensor(loss), {"task_losses": torch.tensor(tasks)})
    return window


def test_the_window_sums_losses_and_rows_and_makes_the_scalars_and_the_line():
    window = _window_of([0.5, 1.5], [[0.2, 0.3], [1.0, 0.5]])
    window.grad_norm = torch.tensor(2.0)
    totals = window.read(ONE_RANK)
    assert (totals.first_step, totals.batches, totals.examples, totals.non_finite) == (5, 2, 8, 0)
    assert totals.loss == pytest.approx(2.0) and totals.task_losses == pytest.approx([1.2, 0.8])
    metrics = totals.metrics(["fav", "reply"], {"dense": 0.01}, grad_norm=True)
    assert metrics["train/loss"] == pytest.approx(1.0)
    assert (metrics["train/loss/fav"], metrics["train/loss/reply"]) == pytest.approx((0.6, 0.4))
    assert metrics["train/learning_rate/dense"] == 0.01 and metrics["train/grad_norm"] == pytest.approx(2.0)
    assert metrics["train/examples_per_second"] == metrics["train/examples_per_second/rank_0"] > 0
    assert "train/grad_norm" not in totals.metrics(["fav", "reply"], {"dense": 0.01}, grad_norm=False)
    line = totals.line(["fav", "reply"], {"towers": 0.01, "embeddings": 0.1}, 6, 10, 1)
    assert line.startswith("step 6/10 epoch 1 | loss 1.0000 [fav=0.6000 reply=0.4000] | lr towers=0.01 embeddings=0.1 | ")
    assert line.endswith(" ex/s ({:.0f}/rank)".format(metrics["train/examples_per_second"]))
    assert totals.line([], {"a": 0.5, "b": 0.5}, 6, None, 1).startswith("step 6 epoch 1 | loss 1.0000 | lr 0.5 | ")


def test_a_non_finite_loss_is_raised_when_the_window_is_read():
    totals = _window_of([0.5, math.nan, math.inf], [[0.0, 0.0]] * 3).read(ONE_RANK)
    assert totals.non_finite == 2
    with pytest.raises(NonFiniteLossError, match=r"^non-finite training loss in 2 batch\(es\) between steps 5 and 7; "
                                                 r"training stopped without saving. Last good checkpoint: none"):
        totals.check_finite(7, "none")
    _window_of([0.5], [[0.0, 0.0]]).read(ONE_RANK).check_finite(5, "none")


def test_a_reset_starts_an_empty_window():
    window = _window_of([0.5], [[0.1, 0.2]])
    window.grad_norm = torch.tensor(1.0)
    window.reset(first_step=9)
    assert (window.batches, window.examples, window.grad_norm, window.first_step) == (0, 0, None, 9)
    assert window.sums.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_batch_without_a_size_is_an_error_naming_its_type():
    window = LossWindow(0, torch.device("cpu"), first_step=1)
    with pytest.raises(TypeError, match="cannot tell the batch size of a dict: give it a batch_size attribute"):
        window.account({"x": 1}, torch.tensor(0.5), {})
