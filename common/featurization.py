"""Featurization of continuous features (heavy-tailed counts, ratios; possibly NaN/inf), joined with the binary ones.

Every featurizer maps (continuous [B, C], binary [B, Nb]) to one [B, C + Nb] float tensor and reports `output_dim`.
All start the same way: non-finite values become 0, then x <- sign(x) * log1p(|x|). In training mode each counts
the non-finite values it replaced in the buffer `non_finite_count` (read and reset it with `pop_non_finite_count`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log1p(|x|), with non-finite values (NaN, +-inf) replaced by 0 first."""
    return _signed_log1p_of_finite(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))


def _signed_log1p_of_finite(x: torch.Tensor) -> torch.Tensor:
    return torch.copysign(torch.log1p(torch.abs(x)), x)


def _all_finite_on_cpu(x: torch.Tensor) -> bool:
    """True when x is an eager CPU tensor whose sum is finite, so that none of its values is NaN or infinite (a
    sum that overflows answers False: the caller then looks value by value). One pass instead of the two of
    counting and replacing; reading the answer costs nothing on the CPU, so GPUs and compiled graphs skip it."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return bool(torch.isfinite(x.sum()))


class _Featurizer(nn.Module):
    def __init__(self, num_continuous: int, num_binary: int) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.num_binary = num_binary
        self.output_dim = num_continuous + num_binary
        self.register_buffer("non_finite_count", torch.zeros((), dtype=torch.int64), persistent=False)

    def _log(self, continuous: torch.Tensor) -> torch.Tensor:
        continuous = continuous.float()
        if _all_finite_on_cpu(continuous):
            return _signed_log1p_of_finite(continuous)  # nothing to count or replace
        finite = torch.nan_to_num(continuous, nan=0.0, posinf=0.0, neginf=0.0)
        if self.training:
            # The replaced values are exactly those that differ from the input (NaN differs from everything).
            self.non_finite_count += (finite != continuous).sum()
        return _signed_log1p_of_finite(finite)

    def pop_non_finite_count(self) -> int:
        """Non-finite continuous values seen in training since the last call (synchronizes with the device)."""
        count = int(self.non_finite_count.item())
        self.non_finite_count.zero_()
        return count


class Log1pAbs(_Featurizer):
    """sign(x) * log1p(|x|) of the continuous features, then the binary features."""

    def __init__(self, num_continuous: int, num_binary: int, clip_magnitude: float | None = None) -> None:
        super().__init__(num_continuous, num_binary)
        self.clip_magnitude = clip_magnitude

    def forward(self, continuous: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
        x = self._log(continuous)
        if self.clip_magnitude is not None:
            x = torch.clamp(x, -self.clip_magnitude, self.clip_magnitude)
        return torch.cat([x, binary.to(x.dtype)], dim=1)


class ClipLog1pAbs(Log1pAbs):
    """Log1pAbs clamped to +-clip_magnitude."""

    def __init__(self, num_continuous: int, num_binary: int, clip_magnitude: float = 5.0) -> None:
        super().__init__(num_continuous, num_binary, clip_magnitude)


class ZScoreLog(_Featurizer):
    """(sign(x) * log1p(|x|) - mean) / std with per-column statistics of the training data, optionally clamped."""

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, num_binary: int, clip_magnitude: float | None = 5.0
    ) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"ZScoreLog: mean has {mean.numel()} values but std has {std.numel()}")
        super().__init__(mean.numel(), num_binary)
        # A constant column has std 0: centre it and leave its scale alone.
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)
        self.clip_magnitude = clip_magnitude

    def forward(self, continuous: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
        x = (self._log(continuous) - self.mean) * self.inv_std
        if self.clip_magnitude is not None:
            x = torch.clamp(x, -self.clip_magnitude, self.clip_magnitude)
        return torch.cat([x, binary.to(x.dtype)], dim=1)


class DoubleNormLog(_Featurizer):
    """signed log1p -> [BatchNorm1d] -> clamp(+-clip_magnitude) -> concat binary -> [LayerNorm]."""

    def __init__(
        self,
        num_continuous: int,
        num_binary: int,
        batch_norm: bool = True,
        batch_norm_affine: bool = True,
        batch_norm_momentum: float = 0.1,
        clip_magnitude: float = 5.0,
        layer_norm: bool = True,
    ) -> None:
        super().__init__(num_continuous, num_binary)
        self.batch_norm = (
            nn.BatchNorm1d(num_continuous, affine=batch_norm_affine, momentum=batch_norm_momentum)
            if batch_norm and num_continuous > 0
            else nn.Identity()
        )
        self.clip_magnitude = clip_magnitude
        self.layer_norm = (
            nn.LayerNorm(self.output_dim) if layer_norm and self.output_dim > 0 else nn.Identity()
        )

    def forward(self, continuous: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
        x = self.batch_norm(self._log(continuous))
        # torch.clamp's values; its backward is one pass (hardtanh's) instead of clamp's four (compare, compare,
        # and, select). They differ only at exactly +-clip_magnitude, where this passes no gradient.
        x = F.hardtanh(x, -self.clip_magnitude, self.clip_magnitude)
        return self.layer_norm(torch.cat([x, binary.to(x.dtype)], dim=1))
