"""The tokens of one history group and the items' weights.

An item's token is its id embeddings (one table per id column), its action-type embedding and a Linear projection
of its continuous values (sign(x)·log1p|x|, so an age in hours or a count enters on a log scale), side by side:

    e_j = [E_1[id_1(j)], ..., E_n[id_n(j)], A[action_j], W · slog(x_j) + b]
    c   = [E_1[cand_1], ..., E_n[cand_n], A[num_actions], b + P · f]

The candidate's ids are looked up in the same tables, its action is the dedicated "candidate" action and its
continuous block holds no item values: the bias b, plus (with `candidate_features`) a projection P of the row's
featurized continuous and binary features f, so the attention MLP sees the candidate's side features next to its
ids. P starts at zero: at initialization c is the token without it. The continuous block exists when the group
has continuous columns or candidate features (an item's block is then b alone without columns).

An item's weight (`ItemWeights`, optional) multiplies what the item contributes to pooling and target attention:

    g_j = s[action_j] · exp(-softplus(τ) · max(age_j, 0))

with a learned scalar s per action type (`action_weights`, all 1 at initialization) and a learned decay rate on
one continuous column, an age (`time_decay`; softplus(τ) starts at 1 / init_hours). A non-finite age counts as 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.init import EmbeddingInit, init_embedding_
from common.sparse_embeddings import hash_ids

__all__ = ["HistoryTokens", "ItemWeights", "finite"]


def finite(x: torch.Tensor) -> torch.Tensor:
    """x with NaN and ±inf replaced by 0 (an unknown value, not a bad row)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class HistoryTokens(nn.Module):
    """Item and candidate tokens of one history group (see the module docstring): blocks of `dim` values side by
    side, one per id column, then the action block and the continuous block when the group has them."""

    def __init__(self, dim: int, tables: dict[str, tuple[int, bool] | None], num_actions: int | None = None,
                 num_continuous: int = 0, init: EmbeddingInit | None = None, candidate_features: int = 0) -> None:
        """tables: {id column: (num_embeddings, hashed) of a replicated table owned here, or None for a column whose
        rows come in as inputs (a sharded table)}; num_actions: action types (None: the group has none); init: the
        id and action tables' initial weights (None: normal with std dim ** -0.5 for ids, nn.Embedding's N(0, 1)
        for actions); candidate_features: the width of the row features projected into the candidate's continuous
        block (0: none)."""
        super().__init__()
        if not tables:
            raise ValueError("a history group needs at least one id column")
        if num_continuous < 0 or candidate_features < 0:
            raise ValueError(f"num_continuous ({num_continuous}) and candidate_features ({candidate_features}) "
                             "must not be negative")
        self.columns = list(tables)
        owned = {c: t for c, t in tables.items() if t is not None}
        # Module names cannot hold dots: replicated tables are stored by position, in `columns` order.
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n, _ in owned.values())
        self.table_index = {c: i for i, c in enumerate(owned)}
        self.sizes = [n for n, _ in owned.values()]
        self.hashed = [h for _, h in owned.values()]
        for column, table in zip(owned, self.tables):
            init_embedding_(table.weight, init or ("normal", dim ** -0.5), column)
        self.num_actions = num_actions
        # The last index is the candidate's "action".
        self.actions = nn.Embedding(num_actions + 1, dim) if num_actions is not None else None
        if self.actions is not None:
            init_embedding_(self.actions.weight, init, "actions")
        self.num_continuous = num_continuous
        self.continuous: nn.Module | None = None
        if num_continuous:
            self.continuous = nn.Linear(num_continuous, dim)
        elif candidate_features:  # the bias alone: the items' block (no parameter that nothing reads)
            self.continuous = _Bias(dim)
        self.candidate_projection = nn.Linear(candidate_features, dim, bias=False) if candidate_features else None
        if self.candidate_projection is not None:
            nn.init.zeros_(self.candidate_projection.weight)
        self.block = dim
        self.dim = dim * (len(self.columns) + (self.actions is not None) + (self.continuous is not None))

    def _lookup(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64)
        if self.hashed[index]:
            ids = hash_ids(ids)
        return self.tables[index](torch.remainder(ids, self.sizes[index]))

    def _rows(self, inputs: dict[str, torch.Tensor], prefix: str, column: str) -> torch.Tensor:
        """[B, L, dim] rows of one id column: looked up here, or given (a sharded table's rows)."""
        index = self.table_index.get(column)
        if index is None:
            return inputs[prefix + "emb:" + column].float()
        return self._lookup(index, inputs[prefix + "id:" + column])

    def items(self, inputs: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        """[B, L, dim] tokens of the padded history (or [N, dim] of packed items)."""
        blocks = [self._rows(inputs, prefix, column) for column in self.columns]
        if self.actions is not None:
            # In [0, num_actions) (HistoryEncoder checks it): index num_actions is the candidate's own action.
            blocks.append(self.actions(inputs[prefix + "actions"].to(torch.int64)))
        if self.continuous is not None:
            if self.num_continuous:
                x = finite(inputs[prefix + "continuous"].float())
                blocks.append(self.continuous(torch.sign(x) * torch.log1p(x.abs())))
            else:
                blocks.append(self.continuous.bias.expand(*blocks[0].shape[:-1], -1))
        return torch.cat(blocks, dim=-1)

    def candidate(self, inputs: dict[str, torch.Tensor], prefix: str, like: torch.Tensor,
                  features: torch.Tensor | None = None) -> torch.Tensor:
        """[B, dim] candidate tokens: its ids' embeddings (zeros for an id column without a candidate column), the
        "candidate" action and the continuous block (b, plus P · features with candidate features: features
        [B, candidate_features], the row's featurized inputs)."""
        batch = like.shape[0]
        blocks = []
        for column in self.columns:
            index = self.table_index.get(column)
            key = prefix + "candidate:" + (column if index is not None else "emb:" + column)
            if key not in inputs:
                blocks.append(like.new_zeros((batch, self.block), dtype=torch.float32))
            elif index is None:
                blocks.append(inputs[key].float())
            else:
                blocks.append(self._lookup(index, inputs[key]))
        if self.actions is not None:
            index = torch.full((batch,), self.num_actions, dtype=torch.int64, device=like.device)
            blocks.append(self.actions(index))
        if self.continuous is not None:
            block = self.continuous.bias.expand(batch, -1)
            if self.candidate_projection is not None:
                if features is None or features.dim() != 2 or features.shape[0] != batch:
                    got = None if features is None else tuple(features.shape)
                    raise ValueError(f"history group {prefix[:-1]!r} projects the candidate's features into its "
                                     f"token: it needs them one row per candidate ({batch} rows), got {got}")
                block = block + self.candidate_projection(finite(features.float()))
            blocks.append(block)
        return torch.cat(blocks, dim=-1)


class _Bias(nn.Module):
    """The continuous block of a group without continuous columns: a learned bias b, as nn.Linear(0, dim) has."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-dim ** -0.5, dim ** -0.5))


class ItemWeights(nn.Module):
    """g_j = s[action_j] · exp(-softplus(τ) · max(age_j, 0)) per item (see the module docstring), from the items'
    actions [...] and continuous values [..., C] (padded [B, L] or packed [N]); None when neither is on."""

    def __init__(self, num_actions: int | None = None, action_weights: bool = False,
                 decay_column: int | None = None, decay_init_hours: float = 24.0) -> None:
        super().__init__()
        if action_weights and num_actions is None:
            raise ValueError("action_weights needs the group's action types (num_actions)")
        if decay_column is not None and (decay_column < 0 or not decay_init_hours > 0):
            raise ValueError(f"time decay needs a continuous column index >= 0 (got {decay_column}) and "
                             f"init_hours > 0 (got {decay_init_hours})")
        self.action_scale = nn.Parameter(torch.ones(num_actions)) if action_weights and num_actions else None
        self.decay_column = decay_column
        # softplus(τ) = 1 / init_hours: τ = log(expm1(1 / init_hours)).
        self.decay = (nn.Parameter(torch.tensor(math.log(math.expm1(1.0 / decay_init_hours))))
                      if decay_column is not None else None)

    @property
    def active(self) -> bool:
        return self.action_scale is not None or self.decay is not None

    def forward(self, actions: torch.Tensor | None, continuous: torch.Tensor | None) -> torch.Tensor | None:
        weight = None
        if self.action_scale is not None:
            assert actions is not None  # HistoryEncoder checks the group's inputs
            # Padding may hold any value in range; its weight is masked by the encoders.
            weight = self.action_scale[actions.to(torch.int64)]
        if self.decay is not None:
            assert continuous is not None
            age = finite(continuous[..., self.decay_column].float()).clamp(min=0.0)
            decay = torch.exp(-nn.functional.softplus(self.decay) * age)
            weight = decay if weight is None else weight * decay
        return weight
