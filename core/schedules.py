"""Learning-rate schedules: pure functions of the optimizer step, so a resumed run reproduces them exactly.

`step` is the number of the update being applied, counted from 1 (it equals the step counter after the update, as
logged and as checkpoint directories are numbered). The schedules:
  constant                 lr
  piecewise_constant       values[i] while step < boundaries[i]; values[-1] from the last boundary on
  linear_ramp_to_constant  lr * min(1, step / num_ramp_steps)
  linear_ramp_to_cosine    lr * step / num_ramp_steps up to num_ramp_steps, then
                           final + (lr - final) * (1 + cos(pi * (step - ramp) / (final_num_steps - ramp))) / 2,
                           and final_learning_rate from final_num_steps on (by default the training's last step)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from core.config import ConfigError
from core.train_config import LearningRateConfig


@dataclass(frozen=True)
class Constant:
    learning_rate: float

    def __call__(self, step: int) -> float:
        return self.learning_rate


@dataclass(frozen=True)
class PiecewiseConstant:
    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("piecewise_constant needs exactly one more value than boundaries")

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, step)]


@dataclass(frozen=True)
class LinearRampToConstant:
    learning_rate: float
    num_ramp_steps: int

    def __call__(self, step: int) -> float:
        return self.learning_rate * min(1.0, step / self.num_ramp_steps)


@dataclass(frozen=True)
class LinearRampToCosine:
    learning_rate: float
    final_learning_rate: float
    num_ramp_steps: int
    final_num_steps: int

    def __call__(self, step: int) -> float:
        if step < self.num_ramp_steps:
            return self.learning_rate * step / self.num_ramp_steps
        if step >= self.final_num_steps:
            return self.final_learning_rate
        progress = (step - self.num_ramp_steps) / (self.final_num_steps - self.num_ramp_steps)
        span = self.learning_rate - self.final_learning_rate
        return self.final_learning_rate + span * (1.0 + math.cos(math.pi * progress)) / 2.0


Schedule = Constant | PiecewiseConstant | LinearRampToConstant | LinearRampToCosine


def build_schedule(config: LearningRateConfig, total_steps: int | None = None) -> Schedule:
    """The schedule a LearningRateConfig describes; total_steps (the training's length, when known) ends a cosine
    whose final_num_steps is omitted."""
    if config.constant is not None:
        return Constant(config.constant)
    if config.piecewise_constant is not None:
        pc = config.piecewise_constant
        return PiecewiseConstant(tuple(pc.boundaries), tuple(pc.values))
    if config.linear_ramp_to_constant is not None:
        lr = config.linear_ramp_to_constant
        return LinearRampToConstant(lr.learning_rate, lr.num_ramp_steps)
    cos = config.linear_ramp_to_cosine
    assert cos is not None  # LearningRateConfig validates exactly one schedule
    final = cos.final_num_steps if cos.final_num_steps is not None else total_steps
    if final is None:
        raise ConfigError("linear_ramp_to_cosine: final_num_steps is required when the training length is unknown "
                          "(training.num_train_steps, or training.num_epochs over data of known size)")
    if final <= cos.num_ramp_steps:
        raise ConfigError(f"linear_ramp_to_cosine: num_ramp_steps ({cos.num_ramp_steps}) must be below the last "
                          f"step of the cosine ({final}, the training's length)")
    return LinearRampToCosine(cos.learning_rate, cos.final_learning_rate, cos.num_ramp_steps, final)
