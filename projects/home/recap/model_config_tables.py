"""Model config, embedding tables: their initial weights, the small nn.Embedding tables over discrete columns, the
large torchrec tables over sparse ids (placement, kernel, learning rate) and the position-debias table.

One of the parts of model.* (model_config.py holds ModelConfig, which reads them)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config import BaseConfig

# The default of model.embedding_init: a small normal init (peers use 1e-4); 0.01 did as well or better on validation
# on small id data, census and 1M id-heavy rows (docs/benchmarks/defaults.md).
DEFAULT_EMBEDDING_INIT_STD = 0.01

# Task and table names become module names (task_modules.<task>, embedding_bags.<table>): no dots, no spaces.
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EmbeddingInitConfig(BaseConfig):
    """Initial weights of an embedding table: uniform in [-uniform_bound, uniform_bound] or normal(0, normal_std)."""

    exactly_one_of = (("uniform_bound", "normal_std"),)

    uniform_bound: float | None = Field(default=None, gt=0.0)
    normal_std: float | None = Field(default=None, gt=0.0)

    def as_tuple(self) -> tuple[str, float]:
        """("uniform", bound) or ("normal", std), as the blocks in common/ take it."""
        if self.uniform_bound is not None:
            return ("uniform", self.uniform_bound)
        assert self.normal_std is not None  # exactly one is set
        return ("normal", self.normal_std)


class SmallEmbeddingConfig(BaseConfig):
    """An nn.Embedding over a small-vocabulary discrete column; ids outside [0, num_embeddings) are taken modulo.

    A list column (data.features.discrete entry with `length: L`) looks each of its L slots up in this one table and
    concatenates them in slot order: the model input gets L * embedding_dim values from it."""

    feature: str
    num_embeddings: int = Field(ge=1)
    embedding_dim: int = Field(ge=1)
    # This table's initial weights instead of model.embedding_init.
    init: EmbeddingInitConfig | None = None


class LargeEmbeddingConfig(BaseConfig):
    """A torchrec embedding-bag table over one or more sparse id columns (sharded across ranks)."""

    name: str
    feature_names: list[str] = Field(min_length=1)
    num_embeddings: int = Field(ge=1)
    embedding_dim: int = Field(ge=1)
    pooling: Literal["sum", "mean"] = "mean"
    # How raw ids are brought into [0, num_embeddings): modulo, or a multiplicative hash then modulo.
    id_transform: Literal["mod", "hash"] = "hash"
    # Where the table is computed; auto lets torchrec's planner choose among what can train (core/table_placement.py).
    sharding: Literal["auto", "data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise",
                      "table_column_wise"] = "auto"
    compute_kernel: Literal["auto", "fused", "dense", "fused_uvm", "fused_uvm_caching"] = "auto"
    # This table's learning rate instead of optimizer.sparse.learning_rate.
    learning_rate: float | None = Field(default=None, gt=0.0)
    # This table's initial weights instead of model.embedding_init.
    init: EmbeddingInitConfig | None = None

    @model_validator(mode="after")
    def _kernel_matches_sharding(self):
        if self.sharding == "data_parallel" and self.compute_kernel not in ("auto", "dense"):
            raise ValueError(f"data_parallel tables compute with the dense kernel, not {self.compute_kernel}")
        if self.compute_kernel == "dense" and self.sharding not in ("auto", "data_parallel"):
            raise ValueError(f"the dense kernel computes data_parallel tables only, not {self.sharding}")
        return self

    @field_validator("name")
    @classmethod
    def _module_name(cls, value: str) -> str:
        if not MODULE_NAME.match(value):
            raise ValueError(f"table name {value!r} must be letters, digits and underscores, not starting with a digit")
        return value


class PositionDebiasConfig(BaseConfig):
    """Embedding of a position column; replaced by 'unknown' with drop_probability in training, always at eval."""

    feature: str
    num_positions: int = Field(ge=1)
    embedding_dim: int = Field(default=8, ge=1)
    drop_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    # The position table's initial weights instead of model.embedding_init.
    init: EmbeddingInitConfig | None = None
