"""The plain-PyTorch reference ranker: one `nn.EmbeddingBag` per large table in front of the project's dense model.

It replaces only the torchrec EmbeddingBagCollection (and its sparse optimizer): the same tables (rows,
width, pooling, initialization), the same id transform (common/sparse_embeddings.py: hash or mod), the same pooled
column order, so the DenseRankingModel after it is the very one `recap train` builds. Its tables are ordinary
parameters with dense gradients, trained by torch.optim.Adam: a yardstick of how well ids can be learned, free of
torchrec and fbgemm. The batch's sparse ids arrive as a KeyedJaggedTensor, read here as plain values and lengths.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.batch import RecapBatch
from common.init import init_embedding_
from common.sparse_embeddings import LargeTableSpec, hash_ids


def _initialize(weight: nn.Parameter, table: LargeTableSpec) -> None:
    """The table's configured initialization, else torchrec's default: uniform in +-sqrt(1 / rows)."""
    init_embedding_(weight, table.init or ("uniform", math.sqrt(1.0 / table.num_embeddings)), table.name)


class EmbeddingBagTables(nn.Module):
    """Pools sparse ids into [B, P]: each table's features in table order, each feature its table's width (the
    column order of MultiTaskRankingModel.embed_sparse)."""

    def __init__(self, tables: list[LargeTableSpec]) -> None:
        super().__init__()
        self.bags = nn.ModuleDict()
        # (feature, table, rows, hashed) in output order.
        self.features: list[tuple[str, str, int, bool]] = []
        for t in tables:
            if t.pooling not in ("sum", "mean") or t.id_transform not in ("hash", "mod"):
                raise ValueError(f"large embedding table {t.name!r}: pooling {t.pooling!r} / id_transform "
                                 f"{t.id_transform!r} is not one of sum, mean / hash, mod")
            bag = nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode=t.pooling)
            _initialize(bag.weight, t)
            self.bags[t.name] = bag
            self.features += [(f, t.name, t.num_embeddings, t.id_transform == "hash") for f in t.feature_names]

    @property
    def output_dim(self) -> int:
        """Width of the pooled output."""
        return sum(self.bags[table].embedding_dim for _, table, _, _ in self.features)

    def forward(self, sparse) -> torch.Tensor:
        """sparse: a KeyedJaggedTensor (keys, values and per-key lengths of a uniform batch); returns [B, P]."""
        keys = list(sparse.keys())
        batch_size = sparse.stride()
        lengths = sparse.lengths().view(len(keys), batch_size)
        values = torch.split(sparse.values(), lengths.sum(dim=1).tolist())
        pooled = []
        for feature, table, rows, hashed in self.features:
            if feature not in keys:
                raise KeyError(f"sparse feature {feature!r} of table {table!r} is not in the batch (it has {keys})")
            k = keys.index(feature)
            ids = values[k].to(torch.int64)
            ids = torch.remainder(hash_ids(ids) if hashed else ids, rows)
            offsets = torch.cumsum(lengths[k], dim=0) - lengths[k]
            pooled.append(self.bags[table](ids, offsets))
        return torch.cat(pooled, dim=1)


class ReferenceRankingModel(nn.Module):
    """EmbeddingBagTables, then the project's DenseRankingModel: forward(batch) returns what MultiTaskRankingModel
    returns (logits, probabilities, calibrated probabilities), so ModelAndLoss and the evaluator take it as is."""

    def __init__(self, dense: nn.Module, tables: EmbeddingBagTables | None) -> None:
        super().__init__()
        self.dense = dense
        self.tables = tables

    @property
    def task_names(self) -> list[str]:
        return self.dense.task_names

    @property
    def output_names(self) -> list[str]:
        """The dense model's outputs beyond the per-task ones (the score, gate weights)."""
        return self.dense.output_names

    def forward(self, batch: RecapBatch) -> dict[str, torch.Tensor]:
        if self.tables is None:
            pooled = batch.continuous.new_zeros(batch.batch_size, 0)
        elif batch.sparse is None:
            raise ValueError(f"the reference model has tables for {[f for f, *_ in self.tables.features]} but "
                             "batch.sparse is None")
        else:
            pooled = self.tables(batch.sparse)
        return self.dense(batch.continuous, batch.binary, batch.discrete, batch.embeddings, pooled)
