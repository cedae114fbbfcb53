"""Train the two references and score them on the test split with the project's metrics (core.metrics).

- plain: PlainSharedBottom, Adam 1e-3 (weight decay 1e-5), batch 256, `plain_epochs` epochs, the last weights.
- peer: the same model and optimizer, evaluated on the validation split after every epoch; stops when the mean
  validation AUC over tasks has not improved for `patience` epochs (at most `peer_max_epochs`) and keeps the best
  epoch's weights, as peer libraries' trainers do.

Both come from one training run: with the same seed, the peer's first epochs are exactly the plain model's (scoring
the validation split in eval mode changes neither the weights, the BatchNorm statistics nor the random stream), so the
plain model is the run's state after `plain_epochs` epochs.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.log import get_logger
from core.metrics import auc, binary_metrics
from projects.home.recap.baselines.arrays import ReferenceData, SplitArrays
from projects.home.recap.baselines.plain_model import PlainSharedBottom

logger = get_logger(__name__)

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 256
EVAL_BATCH_SIZE = 8192


@dataclass(frozen=True)
class ReferenceSettings:
    """How long the references train and how the peer stops."""

    plain_epochs: int = 5
    peer_max_epochs: int = 10
    patience: int = 2
    seed: int = 0


@dataclass
class ReferenceResult:
    """Test metrics per task (core.metrics.binary_metrics blocks) and how the model was chosen."""

    tasks: dict[str, dict]
    epochs_trained: int
    chosen_epoch: int
    validation_auc: list[float] = field(default_factory=list)  # mean over tasks, per epoch (peer only)
    seconds: float = 0.0


def _tensors(split: SplitArrays, rows: np.ndarray | slice) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    return (torch.from_numpy(split.categorical[rows]), [torch.from_numpy(b[rows]) for b in split.bags],
            torch.from_numpy(split.continuous[rows]))


@torch.no_grad()
def predict(model: nn.Module, split: SplitArrays) -> np.ndarray:
    """Probabilities [N, T] of the model in eval mode."""
    model.eval()
    out = [torch.sigmoid(model(*_tensors(split, slice(start, start + EVAL_BATCH_SIZE))))
           for start in range(0, len(split), EVAL_BATCH_SIZE)]
    return torch.cat(out).double().numpy()


def _mean_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    values = [auc(probabilities[:, t], labels[:, t]) for t in range(labels.shape[1])]
    return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) else 0.0


def split_metrics(probabilities: np.ndarray, split: SplitArrays, tasks: list[str]) -> dict[str, dict]:
    """Per task, the metrics the project's evaluator reports (with the oracle's when the split has it)."""
    out = {}
    for t, task in enumerate(tasks):
        block = binary_metrics(probabilities[:, t], split.labels[:, t])
        if split.oracle is not None:
            block["oracle"] = binary_metrics(split.oracle[:, t], split.labels[:, t])
        out[task] = block
    return out


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: SplitArrays,
                 generator: torch.Generator) -> None:
    model.train()
    labels = torch.from_numpy(split.labels)
    order = torch.randperm(len(split), generator=generator).numpy()
    # The last partial batch is dropped, as our loader does in training (and BatchNorm needs more than one row).
    for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
        rows = order[start:start + BATCH_SIZE]
        logits = model(*_tensors(split, rows))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[rows], reduction="none").mean(0).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@contextmanager
def _one_thread():
    """torch on one intra-op thread, then as before. The references' ops are tiny (batch 256, 16-d tables): threads
    only add synchronisation, and on a machine shared with other jobs their spin-waits made a step 25x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_references(data: ReferenceData, settings: ReferenceSettings) -> dict[str, ReferenceResult]:
    """{"plain": ..., "peer": ...}: both references trained on data.train and scored on data.test."""
    if len(data.train) < BATCH_SIZE:
        raise ValueError(f"the references train in batches of {BATCH_SIZE}: the train split has {len(data.train)} rows")
    with _one_thread():
        return _train_references(data, settings)


def _train_references(data: ReferenceData, settings: ReferenceSettings) -> dict[str, ReferenceResult]:
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = PlainSharedBottom(data.categorical_sizes, data.bag_sizes, len(data.continuous_names), len(data.tasks))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    plain = None
    history: list[float] = []
    best_auc, best_epoch, best_state, peer_done = -np.inf, 0, None, False
    epoch = 0
    while epoch < max(settings.plain_epochs, settings.peer_max_epochs) and not (plain and peer_done):
        _train_epoch(model, optimizer, data.train, generator)
        epoch += 1
        if epoch == settings.plain_epochs:
            plain = ReferenceResult(split_metrics(predict(model, data.test), data.test, data.tasks), epoch, epoch,
                                    seconds=time.perf_counter() - start)
        if not peer_done:
            history.append(_mean_auc(predict(model, data.validation), data.validation.labels))
            if history[-1] > best_auc:
                best_auc, best_epoch, best_state = history[-1], epoch, copy.deepcopy(model.state_dict())
            peer_done = epoch - best_epoch >= settings.patience or epoch >= settings.peer_max_epochs
            peer_epochs = epoch
            logger.info("references: epoch %d, validation mean AUC %.4f (best: epoch %d)%s", epoch, history[-1],
                        best_epoch, ", the peer stops" if peer_done else "")
        else:
            logger.info("references: epoch %d of the plain model's %d", epoch, settings.plain_epochs)
    model.load_state_dict(best_state)
    peer = ReferenceResult(split_metrics(predict(model, data.test), data.test, data.tasks), peer_epochs, best_epoch,
                           validation_auc=history, seconds=time.perf_counter() - start)
    return {"plain": plain, "peer": peer}
