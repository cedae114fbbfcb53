"""Calibration back to the true rate: p_cal = p r / (1 - p + r p) with r = neg_rate / pos_rate."""

import math

import torch

from common.calibration import calibrate_logits, calibrate_probabilities, downsampling_ratio, log_ratio


def test_calibration_formula():
    r = downsampling_ratio(pos_rate=0.5, neg_rate=0.05)
    assert math.isclose(r, 0.1)
    p = torch.tensor([0.0, 0.5, 0.9, 1.0], dtype=torch.float64)
    # 0.5 -> 0.05 / 0.55 = 1/11; 0.9 -> 0.09 / 0.19
    expected = torch.tensor([0.0, 1 / 11, 0.09 / 0.19, 1.0], dtype=torch.float64)
    torch.testing.assert_close(calibrate_probabilities(p, r), expected)


def test_logit_form_equals_the_formula():
    logits = torch.tensor([[-3.0, 0.0, 2.5], [4.0, -1.0, 0.3]])
    ratios = torch.tensor([0.1, 1.0, 4.0])
    expected = calibrate_probabilities(torch.sigmoid(logits), ratios)
    torch.testing.assert_close(calibrate_logits(logits, torch.log(ratios)), expected)
    assert math.isclose(log_ratio(1.0, 0.1), math.log(0.1))
