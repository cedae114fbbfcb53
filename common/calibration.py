"""Calibration of probabilities learned on downsampled logs back to the true rate.

With positives kept at rate pos_rate and negatives at neg_rate, r = neg_rate / pos_rate and
p_cal = p r / (1 - p + r p), which is sigmoid(logit + log r): computed in logit space for numerical safety.
"""

from __future__ import annotations

import math

import torch


def downsampling_ratio(pos_rate: float, neg_rate: float) -> float:
    """r = neg_rate / pos_rate."""
    if not (0.0 < pos_rate <= 1.0 and 0.0 < neg_rate <= 1.0):
        raise ValueError(f"sampling rates must be in (0, 1], got pos_rate={pos_rate}, neg_rate={neg_rate}")
    return neg_rate / pos_rate


def calibrate_probabilities(probabilities: torch.Tensor, ratio: torch.Tensor | float) -> torch.Tensor:
    """p r / (1 - p + r p) for probabilities p and ratio r (broadcast over the last dimension)."""
    ratio = torch.as_tensor(ratio, dtype=probabilities.dtype, device=probabilities.device)
    return probabilities * ratio / (1.0 - probabilities + ratio * probabilities)


def calibrate_logits(logits: torch.Tensor, log_ratio: torch.Tensor | float) -> torch.Tensor:
    """sigmoid(logit + log r): the calibrated probability from a logit, equal to calibrate_probabilities."""
    if isinstance(log_ratio, float):
        return torch.sigmoid(logits + log_ratio)
    return torch.sigmoid(logits + log_ratio.to(logits.dtype))


def log_ratio(pos_rate: float, neg_rate: float) -> float:
    """log(neg_rate / pos_rate), the logit shift of the calibration."""
    return math.log(downsampling_ratio(pos_rate, neg_rate))
