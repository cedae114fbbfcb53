"""Downsampled logs are corrected once: by training weights, or by the model's calibration, never both."""

import math
from pathlib import Path

import numpy as np
import pytest

from projects.home.recap.data.layout import build_layout
from projects.home.recap.model.factory import build_model
from projects.home.recap.schema import load_recap_config

DEMO = Path(__file__).parents[4] / "projects/home/recap/config/demo.yaml"
RATES = ["data.tasks.is_favorited.neg_rate=0.1", "data.tasks.is_favorited.pos_rate=0.5"]
SMALL = ["model.large_embeddings.0.num_embeddings=10", "model.large_embeddings.1.num_embeddings=10",
         "model.large_embeddings.2.num_embeddings=10"]


@pytest.mark.parametrize("mode", ["weights", "calibration"])
def test_rates_are_undone_exactly_once(mode):
    config = load_recap_config(DEMO, RATES + SMALL + [f"data.downsampling_correction={mode}"])
    tasks = list(config.model.tasks)
    layout = build_layout(config.data, tasks)
    weight_rates = config.data.weight_rates("is_favorited")
    calibration_rates = config.data.calibration_rates("is_favorited")
    model = build_model(config, sparse_device="meta")
    shift = model.dense.log_ratio[tasks.index("is_favorited")].item()
    if mode == "weights":
        assert weight_rates == (0.5, 0.1) and calibration_rates == (1.0, 1.0)
        assert shift == 0.0
    else:
        assert weight_rates == (1.0, 1.0) and calibration_rates == (0.5, 0.1)
        assert shift == pytest.approx(math.log(0.1 / 0.5))
    i = tasks.index("is_favorited")
    assert (layout.pos_rates[i], layout.neg_rates[i]) == weight_rates
    # Tasks without downsampling are untouched either way.
    assert np.allclose(model.dense.log_ratio[[tasks.index(t) for t in tasks if t != "is_favorited"]].numpy(), 0.0)
