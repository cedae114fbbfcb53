"""Exact id matches between the candidate and the history, counted from the raw ids (`match_features`).

Per id column with a candidate column, with m_j = [id_j = the candidate's id] over the real items (item j the j-th
most recent), the inputs are

    log1p(Σ_j m_j),  Σ_j m_j / (j + 1),  log1p(Σ_j m_j [action_j = a]) per action type a      (with actions)
    mean action of the matches, Σ_j m_j action_j / Σ_j m_j, scaled to [-1, 1] (0 without one)  (ordinal actions)
    slog(Σ_j m_j g_j), g_j the item's weight (ItemWeights)                                       (with item weights)

and, with ordinal actions (ratings), once per group the mean action of the whole history, scaled likewise: the
user's mean rating and their rating of what resembles the candidate, the aggregates a tree model on ratings leans
on. slog(x) = sign(x)·log1p|x| (a learned action weight may be negative). `match_features` reads padded inputs,
one row per candidate; `packed_match_features` the packed real items (the same values, nothing computed for the
padding).
"""

from __future__ import annotations

import torch

from common.sequence_encoders import row_sum

__all__ = ["match_features", "match_width", "packed_match_features"]


def match_width(num_columns: int, num_actions: int | None, ordinal: bool, weighted: bool) -> int:
    """How many inputs the match features of `num_columns` matched id columns are."""
    if not num_columns:
        return 0
    per_column = 2 + (num_actions or 0) + (ordinal and num_actions is not None) + weighted
    return per_column * num_columns + (ordinal and num_actions is not None)


def _slog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def _centered(mean_action: torch.Tensor, num_actions: int) -> torch.Tensor:
    """A mean action id in [0, K - 1] scaled to [-1, 1] (0 for K = 1)."""
    return (2.0 * mean_action / max(num_actions - 1, 1) - 1.0) if num_actions > 1 else mean_action * 0.0


def match_features(inputs: dict[str, torch.Tensor], prefix: str, columns: list[str], num_actions: int | None,
                   ordinal: bool = False, weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The match features (module docstring) of padded inputs, one row per candidate ([B, L] mask, ids, actions;
    candidate ids [B]); weight: the items' weights [B, L] or None. A list of [B, k] tensors."""
    if not columns:
        return []
    mask = inputs[prefix + "mask"]
    real = mask.float()
    recency = 1.0 / torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32)
    actions = inputs.get(prefix + "actions") if num_actions is not None else None
    out = []
    if ordinal and actions is not None:
        count = real.sum(dim=1, keepdim=True)
        mean = (real * actions.float()).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
        out.append(torch.where(count > 0, _centered(mean, num_actions), torch.zeros_like(mean)))
    for column in columns:
        ids = inputs[prefix + "id:" + column]
        match = ((ids == inputs[prefix + "candidate:" + column][:, None]) & mask).float()
        count = match.sum(dim=1, keepdim=True)
        parts = [torch.log1p(count), (match * recency).sum(dim=1, keepdim=True)]
        if actions is not None:
            kinds = torch.arange(num_actions, device=mask.device)
            per_action = (match[:, :, None] * (actions[:, :, None] == kinds).float()).sum(dim=1)
            parts.append(torch.log1p(per_action))
            if ordinal:
                mean = (match * actions.float()).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
                parts.append(torch.where(count > 0, _centered(mean, num_actions), torch.zeros_like(mean)))
        if weight is not None:
            parts.append(_slog((match * weight).sum(dim=1, keepdim=True)))
        out.append(torch.cat(parts, dim=1))
    return out


def packed_match_features(inputs: dict[str, torch.Tensor], items: dict[str, torch.Tensor], row: torch.Tensor,
                          position: torch.Tensor, prefix: str, columns: list[str], num_actions: int | None,
                          ordinal: bool = False, weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """match_features() from the packed real items (`items` keyed like the padded inputs, their rows and positions
    [N], weight [N] or None; `inputs` for the mask's shape and the candidate ids): the same values, with no
    [B, L] (or [B, L, num_actions]) intermediate."""
    if not columns:
        return []
    batch = inputs[prefix + "mask"].shape[0]
    recency = 1.0 / (position + 1).to(torch.float32)
    actions = items.get(prefix + "actions") if num_actions is not None else None
    out = []
    if actions is not None:
        action = actions.to(torch.int64)
        known = ((action >= 0) & (action < num_actions)).to(torch.float32)  # an unknown action counts nowhere
        slot = row * num_actions + action.clamp(0, num_actions - 1)
    if ordinal and actions is not None:
        ones = torch.ones_like(recency)
        count = row_sum(ones, row, batch).unsqueeze(1)
        mean = row_sum(action.to(torch.float32), row, batch).unsqueeze(1) / count.clamp(min=1.0)
        out.append(torch.where(count > 0, _centered(mean, num_actions), torch.zeros_like(mean)))
    for column in columns:
        candidate = inputs[prefix + "candidate:" + column].index_select(0, row)
        match = (items[prefix + "id:" + column] == candidate).to(torch.float32)
        count = row_sum(match, row, batch).unsqueeze(1)
        parts = [torch.log1p(count), row_sum(match * recency, row, batch)[:, None]]
        if actions is not None:
            per_action = row_sum(match * known, slot, batch * num_actions)
            parts.append(torch.log1p(per_action.view(batch, num_actions)))
            if ordinal:
                mean = row_sum(match * action.to(torch.float32), row, batch).unsqueeze(1) / count.clamp(min=1.0)
                parts.append(torch.where(count > 0, _centered(mean, num_actions), torch.zeros_like(mean)))
        if weight is not None:
            parts.append(_slog(row_sum(match * weight, row, batch).unsqueeze(1)))
        out.append(torch.cat(parts, dim=1))
    return out
