"""Embeddings of dense-tensor inputs: small tables over discrete columns, position debias, upstream dense vectors."""

from __future__ import annotations

import torch
from torch import nn

from common.init import EmbeddingInit, init_embedding_


class SmallEmbeddings(nn.Module):
    """One nn.Embedding per discrete column; ids are taken modulo the table size, so any int64 id is valid.

    A column may be a fixed-length list (`lengths[i]` > 1 slots starting at `columns[i]`): each slot is looked up in
    the column's one table and the slots' embeddings are concatenated in slot order, giving lengths[i] * dim values.
    """

    def __init__(
        self,
        columns: list[int],
        num_embeddings: list[int],
        embedding_dims: list[int],
        lengths: list[int] | None = None,
        inits: list[EmbeddingInit | None] | None = None,
    ) -> None:
        """inits: each table's initial weights (None: nn.Embedding's N(0, 1))."""
        super().__init__()
        lengths = [1] * len(columns) if lengths is None else list(lengths)
        if not len(columns) == len(num_embeddings) == len(embedding_dims) == len(lengths):
            raise ValueError("SmallEmbeddings needs one column, table size, dim and length per table")
        if min(lengths, default=1) < 1:
            raise ValueError(f"column lengths must be at least 1, got {lengths}")
        self.columns = list(columns)
        self.lengths = lengths
        # Where each table's slots begin among all tables' slots (the gathered ids' columns).
        self.slot_starts = [sum(lengths[:i]) for i in range(len(lengths))]
        self.tables = nn.ModuleList(nn.Embedding(n, d) for n, d in zip(num_embeddings, embedding_dims))
        for i, (table, init) in enumerate(zip(self.tables, inits or [None] * len(self.tables))):
            init_embedding_(table.weight, init, f"small embedding {i} (column {columns[i]})")
        slots = [c + k for c, n in zip(columns, lengths) for k in range(n)]
        slot_sizes = [size for size, n in zip(num_embeddings, lengths) for _ in range(n)]
        self.register_buffer("sizes", torch.tensor(slot_sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("column_index", torch.tensor(slots, dtype=torch.int64), persistent=False)
        self.output_dim = sum(n * d for n, d in zip(lengths, embedding_dims))

    def forward(self, discrete: torch.Tensor) -> torch.Tensor:
        # One gather and one remainder for all slots of all tables; remainder is non-negative for negative ids too.
        ids = torch.remainder(discrete.index_select(1, self.column_index), self.sizes)
        parts = []
        for i, table in enumerate(self.tables):
            start, n = self.slot_starts[i], self.lengths[i]
            # [B, n] ids -> [B, n, dim] -> [B, n * dim]: slot k's embedding at k*dim .. (k+1)*dim.
            parts.append(table(ids[:, start : start + n]).flatten(1))
        return torch.cat(parts, dim=1)


class PositionDebias(nn.Module):
    """Embedding of a position column. Row `num_positions` is "unknown": used for positions outside
    [0, num_positions), for a random drop_probability share of rows in training, and for every row at evaluation,
    so the model learns the position effect without depending on it at serving time."""

    def __init__(self, column: int, num_positions: int, embedding_dim: int, drop_probability: float,
                 init: EmbeddingInit | None = None) -> None:
        super().__init__()
        if not 0.0 <= drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {drop_probability}")
        self.column = column
        self.num_positions = num_positions
        self.drop_probability = drop_probability
        self.embedding = nn.Embedding(num_positions + 1, embedding_dim)
        init_embedding_(self.embedding.weight, init, "position")
        self.output_dim = embedding_dim

    def forward(self, discrete: torch.Tensor) -> torch.Tensor:
        position = discrete[:, self.column]
        unknown = torch.full_like(position, self.num_positions)
        if not self.training:
            return self.embedding(unknown)
        keep = (position >= 0) & (position < self.num_positions)
        if self.drop_probability > 0.0:
            keep = keep & (torch.rand(position.shape, device=position.device) >= self.drop_probability)
        return self.embedding(torch.where(keep, position, unknown))


class DenseEmbeddingNorm(nn.Module):
    """Split the concatenated upstream embeddings by their widths and LayerNorm each one (or pass them through)."""

    def __init__(self, dims: list[int], layer_norm: bool = True) -> None:
        super().__init__()
        self.dims = list(dims)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims) if layer_norm else None
        self.output_dim = sum(self.dims)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.norms is None:
            return embeddings.float()
        parts = torch.split(embeddings.float(), self.dims, dim=1)
        return torch.cat([norm(parts[i]) for i, norm in enumerate(self.norms)], dim=1)
