"""Learning-rate schedules on hand-checked steps (step = number of the update, from 1)."""

import math

import pytest

from core.config import ConfigError, load_config
from core.schedules import (
    Constant,
    LinearRampToConstant,
    LinearRampToCosine,
    PiecewiseConstant,
    build_schedule,
)
from core.train_config import LearningRateConfig


def test_constant():
    assert [Constant(0.1)(s) for s in (1, 10, 10**6)] == [0.1, 0.1, 0.1]


def test_piecewise_constant_switches_at_each_boundary():
    schedule = PiecewiseConstant((3, 5), (1.0, 0.5, 0.25))
    assert [schedule(s) for s in range(1, 8)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_linear_ramp_to_constant():
    schedule = LinearRampToConstant(0.4, 4)
    assert [schedule(s) for s in range(1, 7)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_linear_ramp_to_cosine():
    schedule = LinearRampToCosine(learning_rate=1.0, final_learning_rate=0.2, num_ramp_steps=2, final_num_steps=6)
    # ramp: 0.5, 1.0; cosine over steps 2..6: 0.2 + 0.8 * (1 + cos(pi * k / 4)) / 2 for k = 0..4; then 0.2.
    cosine = [0.2 + 0.4 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)]
    assert [schedule(s) for s in range(1, 9)] == pytest.approx([0.5, 1.0, *cosine, 0.2, 0.2])
    assert schedule(4) == pytest.approx(0.6)  # halfway down


def test_cosine_without_ramp_starts_at_the_peak():
    schedule = LinearRampToCosine(learning_rate=1.0, final_learning_rate=0.0, num_ramp_steps=0, final_num_steps=4)
    assert [schedule(s) for s in range(0, 5)] == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                                0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


@pytest.mark.parametrize(("yaml", "expected"), [
    ({"constant": 0.3}, Constant(0.3)),
    ({"piecewise_constant": {"boundaries": [10], "values": [1.0, 0.1]}}, PiecewiseConstant((10,), (1.0, 0.1))),
    ({"linear_ramp_to_constant": {"learning_rate": 0.2, "num_ramp_steps": 5}}, LinearRampToConstant(0.2, 5)),
    ({"linear_ramp_to_cosine": {"learning_rate": 0.2, "final_learning_rate": 0.01, "num_ramp_steps": 5,
                                "final_num_steps": 50}}, LinearRampToCosine(0.2, 0.01, 5, 50)),
])
def test_build_schedule_from_config(yaml, expected):
    assert build_schedule(load_config(None, LearningRateConfig, data=yaml)) == expected


def test_exactly_one_schedule_must_be_configured():
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(None, LearningRateConfig, data={"constant": 0.1, "linear_ramp_to_constant": {
            "learning_rate": 0.1, "num_ramp_steps": 3}})


def test_cosine_without_final_num_steps_ends_at_the_training_length():
    config = load_config(None, LearningRateConfig, data={"linear_ramp_to_cosine": {
        "learning_rate": 0.2, "final_learning_rate": 0.01, "num_ramp_steps": 5}})
    assert build_schedule(config, total_steps=40) == LinearRampToCosine(0.2, 0.01, 5, 40)
    with pytest.raises(ConfigError, match="final_num_steps is required"):
        build_schedule(config)
    with pytest.raises(ConfigError, match=r"num_ramp_steps \(5\) must be below .* \(4, the training's length\)"):
        build_schedule(config, total_steps=4)
