"""The ground truth's task biases: solved so every task hits its positive rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from projects.home.recap.data.synthetic.world import _solve_biases


def test_solve_biases_hits_the_rates():
    bias = _solve_biases(np.array([[0.0, 0.0], [-1.0, 1.0]]), np.array([0.2, 0.5]))
    assert bias[0] == pytest.approx(math.log(0.2 / 0.8)) and bias[1] == pytest.approx(0.0, abs=1e-9)
    logits = 2 * np.random.default_rng(0).standard_normal((3, 5000))
    rates = np.array([0.001, 0.03, 0.6])
    bias = _solve_biases(logits, rates)
    assert np.allclose((1 / (1 + np.exp(-(logits + bias[:, None])))).mean(axis=1), rates, rtol=1e-9)
