"""The small model and the save call the checkpoint tests share."""

import torch
from torch import nn

from core.checkpoint_manager import CheckpointManager


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def save(manager: CheckpointManager, step: int, model: nn.Module):
    return manager.save(step, {"model": model.state_dict()}, info={"step": step}, rank_info={"position": step * 10})
