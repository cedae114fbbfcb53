"""ModelAndLoss: the model plus its per-task weighted BCE-with-logits loss, as the training loop calls it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.batch import RecapBatch
from projects.home.recap.model.multi_task import MultiTaskRankingModel

_TINY = torch.finfo(torch.float32).tiny


def multi_task_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    pos_weight: torch.Tensor,
    loss_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, per-task) loss; per task t: sum_i w_it * bce_it / sum_i w_it, with bce_it = -(pos_weight_t y log p
    + (1 - y) log(1 - p)); total = sum_t loss_weight_t * loss_t. A task with zero total weight contributes 0."""
    logits = logits.float()
    per_row = F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), pos_weight=pos_weight, reduction="none"
    )
    weights = weights.to(logits.dtype)
    task_losses = (per_row * weights).sum(dim=0) / weights.sum(dim=0).clamp_min(_TINY)
    return (task_losses * loss_weight).sum(), task_losses


class ModelAndLoss(nn.Module):
    """forward(batch) -> (total loss, outputs); outputs hold the model's predictions (with the ranking score and gate
    weights when the model has them), labels, weights, per-task losses and the stratifier columns [B, S] taken
    from batch.discrete."""

    def __init__(
        self,
        model: MultiTaskRankingModel,
        pos_weight: list[float],
        loss_weight: list[float],
        stratifier_columns: list[int] | None = None,
    ) -> None:
        super().__init__()
        num_tasks = len(model.task_names)
        if len(pos_weight) != num_tasks or len(loss_weight) != num_tasks:
            raise ValueError(f"need one pos_weight and loss_weight per task ({num_tasks})")
        self.model = model
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32), persistent=False)
        self.register_buffer("loss_weight", torch.tensor(loss_weight, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "stratifier_columns", torch.tensor(stratifier_columns or [], dtype=torch.int64), persistent=False
        )
        # multi_task_bce, or its compiled form (training.compile.target dense+loss, model/compiled.py).
        self.loss_function = multi_task_bce

    @property
    def task_names(self) -> list[str]:
        return self.model.task_names

    def forward(self, batch: RecapBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        predictions = self.model(batch)
        loss, task_losses = self.loss_function(
            predictions["logits"], batch.labels, batch.weights, self.pos_weight, self.loss_weight
        )
        # Built key by key (not dict(predictions)) so torch.fx can trace it for torchrec's train pipelines.
        outputs = {
            "logits": predictions["logits"],
            "probabilities": predictions["probabilities"],
            "calibrated_probabilities": predictions["calibrated_probabilities"],
            "labels": batch.labels,
            "weights": batch.weights,
            "task_losses": task_losses.detach(),
            "stratifiers": batch.discrete.index_select(1, self.stratifier_columns),
        }
        for key in self.model.output_names:  # a list fixed at construction: traceable
            outputs[key] = predictions[key]
        return loss, outputs
