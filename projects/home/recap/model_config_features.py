"""Model config, continuous features: how they are featurized (one of four transforms) and their optional numeric
embeddings (piecewise-linear encoding over quantile bins).

One of the parts of model.* (model_config.py holds ModelConfig, which reads them)."""

from __future__ import annotations

from pydantic import Field, field_validator

from core.config import BaseConfig
from projects.home.recap.model_config_towers import BatchNormConfig


class DoubleNormLogConfig(BaseConfig):
    """non-finite -> 0; sign(x)*log1p(|x|); optional BatchNorm; clamp; concat binary; optional LayerNorm."""

    batch_norm: BatchNormConfig | None = BatchNormConfig()
    clip_magnitude: float = Field(default=5.0, gt=0.0)
    # Off by default: a LayerNorm across the row's features rescales each row by its own mean and spread, mixing
    # unrelated measurements (with a few features it leaves little of them); it helps only with many comparable ones.
    layer_norm: bool = False


class Log1pAbsConfig(BaseConfig):
    """non-finite -> 0; sign(x)*log1p(|x|)."""


class ClipLog1pAbsConfig(BaseConfig):
    """non-finite -> 0; sign(x)*log1p(|x|); clamp to +-clip_magnitude."""

    clip_magnitude: float = Field(default=5.0, gt=0.0)


class ZScoreLogConfig(BaseConfig):
    """sign(x)*log1p(|x|), standardized with statistics written by `recap data stats`."""

    stats_path: str
    clip_magnitude: float | None = Field(default=5.0, gt=0.0)


class FeaturizationConfig(BaseConfig):
    exactly_one_of = (("double_norm_log", "log1p_abs", "clip_log1p_abs", "zscore_log"),)

    double_norm_log: DoubleNormLogConfig | None = None
    log1p_abs: Log1pAbsConfig | None = None
    clip_log1p_abs: ClipLog1pAbsConfig | None = None
    zscore_log: ZScoreLogConfig | None = None


class NumericEmbeddingsConfig(BaseConfig):
    """Piecewise-linear encoding of continuous values over quantile bins, then per-feature Linear + ReLU.

    Bin boundaries come from `recap data stats` (stats_path); each value's embedding joins the model input next to
    the featurized continuous features, which stay."""

    stats_path: str
    # Continuous column names (a list column gives one embedding per slot); omitted: every continuous column.
    features: list[str] | None = Field(default=None, min_length=1)
    embedding_dim: int = Field(default=8, ge=1)
    # Boundaries in the file beyond max_bins + 1 are thinned evenly (the file holds up to 64 bins by default).
    max_bins: int = Field(default=32, ge=1)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) != len(set(value)):
            raise ValueError(f"features must be unique, got {value}")
        return value
