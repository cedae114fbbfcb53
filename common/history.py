"""Engagement history as model input: jagged lists padded once per batch, item tokens, and one encoder per group.

An item's token is the sum of its id embeddings (one table per id column), its action-type embedding and a Linear
projection of its continuous values (sign(x)·log1p|x|, so an age in hours or a count enters on a log scale):

    e_j = sum_c E_c[id_c(j)] + A[action_j] + W · slog(x_j) + b
    c   = sum_c E_c[candidate_c] + A[num_actions] + b       (the candidate: its ids in the same tables, the dedicated
                                                           "candidate" action index, no continuous values)

Ids are hashed (or taken modulo) into each table like the large embedding tables' ids. The encoder (pooling,
target attention or the candidate-isolated transformer, common/sequence_encoders.py) turns the padded tokens and
the candidate token into one vector; the group's output is [encoder output, c], which joins the model input.

Inputs of `HistoryEncoder.forward` are padded [B, L] tensors keyed as in `history_input_names`; `pad_jagged` makes
them from a batch's jagged group (lengths [B] and the rows' items one after another).
"""

from __future__ import annotations

import torch
from torch import nn

from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention
from common.sparse_embeddings import hash_ids

__all__ = ["HistoryEncoder", "HistoryTokens", "history_input_names", "pad_jagged", "padded_history"]


def pad_jagged(values: torch.Tensor, lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """[B, max_length, ...] with row b's first lengths[b] items from `values` (the rows' items one after another),
    zeros after them."""
    lengths = lengths.to(torch.int64)
    batch = lengths.shape[0]
    out = values.new_zeros((batch, max_length, *values.shape[1:]))
    if values.shape[0] == 0:
        return out
    rows = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(values.shape[0], device=lengths.device) - torch.repeat_interleave(starts, lengths)
    out[rows, positions] = values
    return out


def padded_history(group: dict[str, torch.Tensor], max_length: int, prefix: str) -> dict[str, torch.Tensor]:
    """A batch's jagged history group as the padded inputs of HistoryEncoder, keys prefixed with `prefix`: "mask"
    [B, L] bool, each "id:<col>" and "actions" [B, L] int64, "continuous" [B, L, C] float32, and each
    "candidate:<col>" [B] as given."""
    lengths = group["lengths"]
    out = {prefix + "mask": torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]}
    for key, tensor in group.items():
        if key == "lengths":
            continue
        out[prefix + key] = tensor if key.startswith("candidate:") else pad_jagged(tensor, lengths, max_length)
    return out


class HistoryTokens(nn.Module):
    """Item and candidate tokens of one history group (see the module docstring)."""

    def __init__(self, dim: int, tables: dict[str, tuple[int, bool]], num_actions: int | None = None,
                 num_continuous: int = 0) -> None:
        """tables: {id column: (num_embeddings, hashed)}; num_actions: action types (None: the group has none)."""
        super().__init__()
        if not tables:
            raise ValueError("a history group needs at least one id column")
        self.columns = list(tables)
        # Module names cannot hold dots: tables are stored by position, in `columns` order.
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n, _ in tables.values())
        self.sizes = [n for n, _ in tables.values()]
        self.hashed = [h for _, h in tables.values()]
        for table in self.tables:
            nn.init.normal_(table.weight, std=dim ** -0.5)
        self.num_actions = num_actions
        # The last index is the candidate's "action".
        self.actions = nn.Embedding(num_actions + 1, dim) if num_actions is not None else None
        self.continuous = nn.Linear(num_continuous, dim) if num_continuous else None
        self.bias = nn.Parameter(torch.zeros(dim))
        self.dim = dim

    def _lookup(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64)
        if self.hashed[index]:
            ids = hash_ids(ids)
        return self.tables[index](torch.remainder(ids, self.sizes[index]))

    def items(self, inputs: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        """[B, L, D] tokens of the padded history."""
        out = self.bias
        for i, column in enumerate(self.columns):
            out = out + self._lookup(i, inputs[prefix + "id:" + column])
        if self.actions is not None:
            actions = inputs[prefix + "actions"].to(torch.int64).clamp(0, self.num_actions - 1)
            out = out + self.actions(actions)
        if self.continuous is not None:
            x = inputs[prefix + "continuous"].float()
            x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
            out = out + self.continuous(torch.sign(x) * torch.log1p(x.abs()))
        return out

    def candidate(self, inputs: dict[str, torch.Tensor], prefix: str, like: torch.Tensor) -> torch.Tensor:
        """[B, D] candidate tokens (columns without a candidate id contribute nothing)."""
        out = self.bias.expand(like.shape[0], -1)
        for i, column in enumerate(self.columns):
            key = prefix + "candidate:" + column
            if key in inputs:
                out = out + self._lookup(i, inputs[key])
        if self.actions is not None:
            index = torch.full((like.shape[0],), self.num_actions, dtype=torch.int64, device=like.device)
            out = out + self.actions(index)
        return out


class HistoryEncoder(nn.Module):
    """One history group: tokens, then pooling / target attention / the isolated transformer; output [B, 2D]."""

    def __init__(self, name: str, tokens: HistoryTokens, encoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(encoder, (HistoryPooling, TargetAttention, CandidateIsolatedTransformer)):
            raise TypeError(f"unknown history encoder {type(encoder).__name__}")
        self.prefix = name + "/"
        self.tokens = tokens
        self.encoder = encoder
        self.pooling = isinstance(encoder, HistoryPooling)
        self.output_dim = 2 * tokens.dim

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs[self.prefix + "mask"]
        history = self.tokens.items(inputs, self.prefix)
        candidate = self.tokens.candidate(inputs, self.prefix, mask)
        if self.pooling:
            encoded = self.encoder(history, mask)
        else:
            encoded = self.encoder(history, mask, candidate)
        return torch.cat([encoded, candidate], dim=1)


def history_input_names(group: str, ids: list[str], candidates: list[str], actions: bool,
                        continuous: bool) -> list[str]:
    """The padded input keys of one group, as padded_history writes them."""
    prefix = group + "/"
    names = [prefix + "mask"] + [prefix + "id:" + c for c in ids]
    names += [prefix + "actions"] if actions else []
    names += [prefix + "continuous"] if continuous else []
    return names + [prefix + "candidate:" + c for c in candidates]
