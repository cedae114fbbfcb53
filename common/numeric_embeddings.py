"""Embeddings of continuous values: piecewise-linear encoding over per-feature bins, then Linear + ReLU per feature.

Piecewise-linear encoding (PLE, Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep
Learning"): a feature with boundaries b_0 < b_1 < ... < b_T has T bins, and the value x is encoded as

    e_t(x) = clamp((x - b_{t-1}) / (b_t - b_{t-1}), 0, 1),   t = 1..T

so bins entirely below x read 1, bins above x read 0 and the bin holding x reads x's position inside it. Values
below b_0 encode as all zeros and values above b_T as all ones. Non-finite values (NaN, +-inf) are encoded as the
value 0, as the continuous featurizers treat them. A feature with fewer than two boundaries has no bins: its
encoding is empty and its embedding is ReLU(bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def thin_boundaries(boundaries: Sequence[float], max_bins: int) -> list[float]:
    """At most max_bins + 1 of the boundaries, evenly spaced by index, keeping the first and the last.

    Boundaries at equally spaced quantiles thinned this way stay at (approximately) equally spaced quantiles."""
    if max_bins < 1:
        raise ValueError(f"max_bins must be at least 1, got {max_bins}")
    values = [float(b) for b in boundaries]
    if len(values) <= max_bins + 1:
        return values
    last = len(values) - 1
    picks = sorted({round(i * last / max_bins) for i in range(max_bins + 1)})
    return [values[i] for i in picks]


class PiecewiseLinearEncoding(nn.Module):
    """[B, C] continuous values -> [B, C, T] encodings, T the largest bin count (shorter features padded with 0)."""

    def __init__(self, boundaries: Sequence[Sequence[float]]) -> None:
        super().__init__()
        if not boundaries:
            raise ValueError("PiecewiseLinearEncoding needs the boundaries of at least one feature")
        bins = [max(len(b) - 1, 0) for b in boundaries]
        num_bins = max(max(bins), 1)
        lower = torch.zeros(len(boundaries), num_bins, dtype=torch.float64)
        width = torch.ones(len(boundaries), num_bins, dtype=torch.float64)
        mask = torch.zeros(len(boundaries), num_bins)
        for c, values in enumerate(boundaries):
            b = torch.tensor([float(v) for v in values], dtype=torch.float64)
            if not torch.isfinite(b).all() or (b[1:] <= b[:-1]).any():
                raise ValueError(f"feature {c}: boundaries must be finite and strictly increasing, got {list(values)}")
            n = bins[c]
            lower[c, :n] = b[:-1]
            width[c, :n] = b[1:] - b[:-1]
            mask[c, :n] = 1.0
        self.num_features = len(boundaries)
        self.num_bins = num_bins
        self.bins_per_feature = bins
        # Persistent: a checkpoint carries the bins its weights were trained with.
        self.register_buffer("lower", lower.float())
        self.register_buffer("inv_width", (1.0 / width).float())
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.clamp((x.unsqueeze(-1) - self.lower) * self.inv_width, 0.0, 1.0) * self.mask


class NumericEmbeddings(nn.Module):
    """PLE of the chosen continuous columns, then per-feature Linear(T -> dim) + ReLU: [B, C_all] -> [B, C * dim].

    `columns` index the model's continuous tensor (one per encoded value, list columns one per slot); the output
    holds feature i's embedding at i*dim .. (i+1)*dim. The C linear maps are one einsum over a [C, T, dim] weight.
    """

    def __init__(self, columns: Sequence[int], boundaries: Sequence[Sequence[float]], embedding_dim: int) -> None:
        super().__init__()
        if len(columns) != len(boundaries):
            raise ValueError(f"NumericEmbeddings: {len(columns)} columns but {len(boundaries)} boundary lists")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be at least 1, got {embedding_dim}")
        self.encoding = PiecewiseLinearEncoding(boundaries)
        c, t = self.encoding.num_features, self.encoding.num_bins
        self.register_buffer("column_index", torch.tensor(list(columns), dtype=torch.int64), persistent=False)
        self.weight = nn.Parameter(torch.empty(c, t, embedding_dim))
        self.bias = nn.Parameter(torch.empty(c, embedding_dim))
        self.embedding_dim = embedding_dim
        self.output_dim = c * embedding_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each feature's Linear initialized as nn.Linear would be for its own (unpadded) bin count."""
        with torch.no_grad():
            for c, n in enumerate(self.encoding.bins_per_feature):
                bound = 1.0 / max(n, 1) ** 0.5
                self.weight[c].uniform_(-bound, bound)
                self.bias[c].uniform_(-bound, bound)

    def forward(self, continuous: torch.Tensor) -> torch.Tensor:
        encoded = self.encoding(continuous.index_select(1, self.column_index))
        out = torch.einsum("bct,ctd->bcd", encoded.to(self.weight.dtype), self.weight) + self.bias
        return torch.relu(out).flatten(1)
