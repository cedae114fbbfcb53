"""The plain-PyTorch shared-bottom reference, written as a user would write it without a framework.

One 16-d nn.Embedding per categorical column and one 16-d nn.EmbeddingBag (sum) per multi-hot column, all
initialised N(0, 1e-4); the embeddings and the standardised continuous values concatenated; a shared
Linear→BatchNorm→ReLU bottom; per task Linear→BatchNorm→ReLU and a Linear to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING_DIM = 16
BOTTOM = 128
TOWER = 32
INIT_STD = 1e-4


def _bn_relu(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs), nn.ReLU())


class PlainSharedBottom(nn.Module):
    """Logits [B, num_tasks] from categorical ids [B, C], padded bag ids (one [B, L] per bag) and continuous [B, K]."""

    def __init__(self, categorical_sizes: list[int], bag_sizes: list[int], num_continuous: int, num_tasks: int):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, EMBEDDING_DIM) for n in categorical_sizes)
        # The last row of each bag table is the pad: excluded from the sum and never updated.
        self.bags = nn.ModuleList(nn.EmbeddingBag(n, EMBEDDING_DIM, mode="sum", padding_idx=n - 1) for n in bag_sizes)
        for table in [*self.embeddings, *self.bags]:
            nn.init.normal_(table.weight, std=INIT_STD)
        for bag in self.bags:
            with torch.no_grad():
                bag.weight[bag.padding_idx].zero_()
        width = EMBEDDING_DIM * (len(categorical_sizes) + len(bag_sizes)) + num_continuous
        self.bottom = _bn_relu(width, BOTTOM)
        self.towers = nn.ModuleList(nn.Sequential(_bn_relu(BOTTOM, TOWER), nn.Linear(TOWER, 1))
                                    for _ in range(num_tasks))

    def forward(self, categorical: torch.Tensor, bags: list[torch.Tensor], continuous: torch.Tensor) -> torch.Tensor:
        inputs = [table(categorical[:, j]) for j, table in enumerate(self.embeddings)]
        inputs += [table(ids) for table, ids in zip(self.bags, bags)]
        shared = self.bottom(torch.cat([*inputs, continuous], dim=1))
        return torch.cat([tower(shared) for tower in self.towers], dim=1)
