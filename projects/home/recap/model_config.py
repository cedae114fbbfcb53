"""Model section of the recap config: ModelConfig (featurization, embeddings, towers, backbone, the per-task heads,
history encoders, the ranking score) and the checks that span its parts.

The parts sit beside it: continuous features in model_config_features.py, embedding tables in
model_config_tables.py, towers, heads and mixtures in model_config_towers.py, histories in model_config_history.py.
They sit beside schema.py rather than in model/ because schema.py needs them and model/ needs schema.py's
RecapConfig: config modules stay below the model code, so imports run one way (model/ -> schema.py ->
model_config.py -> model_config_*.py)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config import BaseConfig
from projects.home.recap.model_config_features import (
    DoubleNormLogConfig,
    FeaturizationConfig,
    NumericEmbeddingsConfig,
)
from projects.home.recap.model_config_history import SequenceModelConfig, history_table_name
from projects.home.recap.model_config_tables import (
    DEFAULT_EMBEDDING_INIT_STD,
    MODULE_NAME,
    EmbeddingInitConfig,
    LargeEmbeddingConfig,
    PositionDebiasConfig,
    SmallEmbeddingConfig,
)
from projects.home.recap.model_config_towers import MixtureConfig, TaskModelConfig, TowerConfig


class ScoringConfig(BaseConfig):
    """The ranking score: score = sum_t weights[t] * calibrated probability of task t (tasks not named weigh 0;
    negative weights rank down, e.g. reports and negative feedback)."""

    weights: dict[str, float] = Field(min_length=1)

    @field_validator("weights")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {t: w for t, w in value.items() if not math.isfinite(w)}
        if bad:
            raise ValueError(f"scoring weights must be finite numbers, got {bad}")
        return value


class ModelConfig(BaseConfig):
    featurization: FeaturizationConfig = FeaturizationConfig(double_norm_log=DoubleNormLogConfig())
    # Initial weights of every embedding table (small, large, position, history) that sets no `init` of its own.
    # null: each kind's own default (nn.Embedding's N(0, 1), torchrec's uniform(+-sqrt(1/rows)), history tables'
    # N(0, 1/dim)).
    embedding_init: EmbeddingInitConfig | None = EmbeddingInitConfig(normal_std=DEFAULT_EMBEDDING_INIT_STD)
    small_embeddings: list[SmallEmbeddingConfig] = []
    large_embeddings: list[LargeEmbeddingConfig] = []
    # LayerNorm each dense (upstream) embedding before concatenation.
    dense_embedding_layer_norm: bool = True
    position_debias: PositionDebiasConfig | None = None
    numeric_embeddings: NumericEmbeddingsConfig | None = None
    multi_task_type: Literal["share_none", "share_all", "share_partial", "mmoe", "ple"] = "share_none"
    # share_all / share_partial: the shared backbone; mmoe / ple: the architecture of every expert.
    backbone: TowerConfig | None = None
    mixture: MixtureConfig | None = None
    tasks: dict[str, TaskModelConfig] = Field(min_length=1)
    # One ranking score from the task probabilities, in the model outputs, `recap predict` and the serving export.
    scoring: ScoringConfig | None = None
    # Run the task towers as one grouped computation (model/grouped_towers.py): same parameters and checkpoints,
    # towers of one MLP architecture only. auto (default): grouped under bf16 autocast when the dense model is not
    # compiled and the towers can be grouped, one by one otherwise, as measured fastest on the CPU
    # ([Compiling the model](../benchmarks/performance.md#compiling-the-model)); true: always (an error when the
    # towers cannot be grouped); false: never.
    group_towers: bool | Literal["auto"] = "auto"
    # Engagement-history encoders, one per data.features.sequences group.
    sequences: dict[str, SequenceModelConfig] = {}

    @model_validator(mode="after")
    def _scoring_names_tasks(self):
        if self.scoring is not None:
            unknown = [t for t in self.scoring.weights if t not in self.tasks]
            if unknown:
                raise ValueError(f"model.scoring.weights names {unknown}, which are not model.tasks "
                                 f"({list(self.tasks)})")
        return self

    def init_of(self, own: EmbeddingInitConfig | None) -> tuple[str, float] | None:
        """A table's initial weights: its own `init`, else model.embedding_init, else None (its kind's default)."""
        chosen = own or self.embedding_init
        return chosen.as_tuple() if chosen is not None else None

    def score_weights(self) -> list[float] | None:
        """The scoring weight of each task in model.tasks order (0 where not named); None without scoring."""
        if self.scoring is None:
            return None
        return [float(self.scoring.weights.get(t, 0.0)) for t in self.tasks]

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: dict[str, TaskModelConfig]) -> dict[str, TaskModelConfig]:
        bad = [name for name in value if not MODULE_NAME.match(name)]
        if bad:
            raise ValueError(
                f"task names {bad} must be letters, digits and underscores, not starting with a digit "
                "(each task's modules are stored under its name)"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self):
        tables = [t.name for t in self.large_embeddings]
        if len(tables) != len(set(tables)):
            raise ValueError(f"model.large_embeddings: table names must be unique, got {tables}")
        small = [e.feature for e in self.small_embeddings]
        if len(small) != len(set(small)):
            raise ValueError(f"model.small_embeddings: a feature has two small embeddings ({small})")
        return self

    @model_validator(mode="after")
    def _history_tables_exist(self):
        large = {t.name: t for t in self.large_embeddings}
        own: dict[str, str] = {}
        for group, spec in self.sequences.items():
            for column, table in spec.tables.items():
                where = f"model.sequences.{group}.tables.{column}"
                if table.table is not None:
                    if table.table not in large:
                        raise ValueError(f"{where}.table: {table.table!r} is not a model.large_embeddings table "
                                         f"(known: {sorted(large)})")
                    dim = large[table.table].embedding_dim
                    if dim != spec.embedding_dim:
                        raise ValueError(f"{where}.table: table {table.table!r} has embedding_dim {dim}, but "
                                         f"model.sequences.{group}.embedding_dim is {spec.embedding_dim}; a history's "
                                         "tables have its embedding_dim")
                elif not table.replicated:
                    name = history_table_name(group, column)
                    if name in large or name in own:
                        clash = "a model.large_embeddings table" if name in large else f"the table of {own[name]}"
                        raise ValueError(f"{where}: its own table would be named {name!r}, which is {clash}; "
                                         "rename one")
                    own[name] = where
        return self

    @model_validator(mode="after")
    def _backbone_matches_sharing(self):
        if self.multi_task_type == "share_none" and self.backbone is not None:
            raise ValueError("multi_task_type share_none takes no backbone; remove model.backbone")
        if self.multi_task_type != "share_none" and self.backbone is None:
            raise ValueError(f"multi_task_type {self.multi_task_type} needs model.backbone")
        return self

    @model_validator(mode="after")
    def _mixture_matches_type(self):
        m, kind = self.mixture, self.multi_task_type
        if kind not in ("mmoe", "ple"):
            if m is not None:
                raise ValueError(f"model.mixture applies to multi_task_type mmoe or ple, not {kind}")
            return self
        if m is None:
            raise ValueError(f"multi_task_type {kind} needs model.mixture (its expert counts)")
        ple_fields = ("num_levels", "num_task_experts", "num_shared_experts")
        if kind == "mmoe":
            if m.num_experts is None or any(getattr(m, f) is not None for f in ple_fields):
                raise ValueError("multi_task_type mmoe takes model.mixture.num_experts only")
        else:
            if m.num_experts is not None or any(getattr(m, f) is None for f in ple_fields):
                raise ValueError("multi_task_type ple takes model.mixture.num_levels, num_task_experts and "
                                 "num_shared_experts")
            if m.num_task_experts + m.num_shared_experts < 1:
                raise ValueError("model.mixture: a ple task gate needs at least one expert")
            if m.num_levels > 1 and m.num_shared_experts < 1:
                raise ValueError("model.mixture: ple with several levels needs shared experts")
        return self
