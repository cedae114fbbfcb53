"""The weighted multi-task loss on hand-checked numbers, and what ModelAndLoss hands the training loop."""

import math

import torch

from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.loss import multi_task_bce
from projects.home.recap.model.synthetic_batch import random_batch

LN2 = math.log(2.0)


def test_weighted_multi_task_bce():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    # task 0: row 0 positive at p=1/2 with pos_weight 2 -> 2 ln 2 (w 1); row 1 negative at p=3/4 -> ln 4 (w 3)
    #         (2 ln2 + 3 ln4) / 4 = 2 ln 2
    # task 1: row 0 negative at p=3/4 -> ln 4 (w 2); row 1 positive at p=1/2 -> ln 2 (w 1): (4 ln2 + ln2) / 3
    total, per_task = multi_task_bce(
        logits, labels, weights, pos_weight=torch.tensor([2.0, 1.0]), loss_weight=torch.tensor([1.0, 0.5])
    )
    torch.testing.assert_close(per_task, torch.tensor([2 * LN2, 5 / 3 * LN2]))
    torch.testing.assert_close(total, torch.tensor(2 * LN2 + 0.5 * 5 / 3 * LN2))


def test_task_with_zero_weight_contributes_nothing():
    total, per_task = multi_task_bce(
        torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([[1.0, 0.0]] * 3), torch.ones(2), torch.ones(2)
    )
    torch.testing.assert_close(per_task, torch.tensor([LN2, 0.0]))
    torch.testing.assert_close(total, torch.tensor(LN2))


def test_model_and_loss_outputs(make_config):
    config = make_config(overrides=["model.tasks.fav.pos_weight=3.0", "model.tasks.report.loss_weight=0.25"])
    model_and_loss = build_model_and_loss(config).eval()
    batch = random_batch(config, 12, torch.Generator().manual_seed(0))
    batch.weights = torch.rand(12, 2) + 0.5
    loss, out = model_and_loss(batch)
    total, per_task = multi_task_bce(
        out["logits"], batch.labels, batch.weights, torch.tensor([3.0, 1.0]), torch.tensor([1.0, 0.25])
    )
    torch.testing.assert_close(loss, total)
    torch.testing.assert_close(out["task_losses"], per_task)
    assert out["labels"] is batch.labels and out["weights"] is batch.weights
    # Stratifiers hour, country are discrete columns 2 and 0.
    assert out["stratifiers"].dtype == torch.int64
    torch.testing.assert_close(out["stratifiers"], batch.discrete[:, [2, 0]])


def test_no_stratifiers_gives_an_empty_column_block(make_config):
    config = make_config(overrides=["evaluation.stratifiers=[]"])
    _, out = build_model_and_loss(config)(random_batch(config, 4))
    assert out["stratifiers"].shape == (4, 0) and out["stratifiers"].dtype == torch.int64
