"""Model section of the recap config: featurization, embeddings, towers, backbone and the per-task heads.

It sits beside schema.py rather than in model/ because schema.py needs it and model/ needs schema.py's RecapConfig:
config modules stay below the model code, so imports run one way (model/ -> schema.py -> model_config.py)."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config import BaseConfig

Activation = Literal["relu", "gelu", "silu", "none"]

# The default of model.embedding_init: a small normal init (peers use 1e-4); 0.01 did as well or better on validation
# on small id data, census and 1M id-heavy rows (README "Defaults").
DEFAULT_EMBEDDING_INIT_STD = 0.01

# Task and table names become module names (task_modules.<task>, embedding_bags.<table>): no dots, no spaces.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def history_table_name(group: str, column: str) -> str:
    """The name of a history id column's own sharded table: `<group>_<column>`, non-alphanumerics as `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{group}_{column}")


# --- featurization of continuous features -------------------------------------------------------------------------
class BatchNormConfig(BaseConfig):
    affine: bool = True
    momentum: float = Field(default=0.1, gt=0.0, le=1.0)


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


# --- embeddings ----------------------------------------------------------------------------------------------------
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
        if not _MODULE_NAME.match(value):
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


# --- towers ----------------------------------------------------------------------------------------------------------
class MlpConfig(BaseConfig):
    """Hidden layers, as in peer libraries: each size is Linear -> [BatchNorm] -> ReLU -> [Dropout], the last one
    too, because an Mlp's output always feeds another Linear (a tower, the task's logit), and two Linear maps in a
    row are one linear map. `layer_sizes: [32]` on a task is one hidden layer of 32 before the logit."""

    layer_sizes: list[int] = Field(min_length=1)
    batch_norm: BatchNormConfig | None = None
    dropout: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _no_final_layer_activation(cls, data):
        # Removed rather than ignored: `false` asked for the silently linear form that no longer exists.
        if isinstance(data, dict) and "final_layer_activation" in data:
            raise ValueError(
                "final_layer_activation was removed: every layer of layer_sizes is now a hidden layer with its "
                "activation (the last one too), so remove the key; a config that had it false ended in a linear "
                "layer feeding another Linear"
            )
        return data


class DcnConfig(BaseConfig):
    """DCN v2: poly_degree cross layers (low rank with projection_dim), stacked or parallel MLP, optional output MLP."""

    at_most_one_of = (("stacked_mlp", "parallel_mlp"),)

    poly_degree: int = Field(ge=1)
    projection_dim: int | None = Field(default=None, ge=1)
    stacked_mlp: MlpConfig | None = None
    parallel_mlp: MlpConfig | None = None
    output_mlp: MlpConfig | None = None


class MaskBlockConfig(BaseConfig):
    """One MaskBlock; the mask's hidden width is int(dim(e)*reduction_factor) or aggregation_size."""

    exactly_one_of = (("reduction_factor", "aggregation_size"),)

    output_size: int = Field(ge=1)
    reduction_factor: float | None = Field(default=None, gt=0.0)
    aggregation_size: int | None = Field(default=None, ge=1)
    input_layer_norm: bool = True
    activation: Activation = "relu"


class MaskNetConfig(BaseConfig):
    mask_blocks: list[MaskBlockConfig] = Field(min_length=1)
    use_parallel: bool = True
    mlp: MlpConfig | None = None


class TowerConfig(BaseConfig):
    """Exactly one tower architecture."""

    exactly_one_of = (("mlp_config", "dcn_config", "mask_net_config"),)

    mlp_config: MlpConfig | None = None
    dcn_config: DcnConfig | None = None
    mask_net_config: MaskNetConfig | None = None


class AffineMapConfig(BaseConfig):
    """logit <- scale * logit + bias, initialized from here."""

    scale: float = 1.0
    bias: float = 0.0
    trainable: bool = True


class TaskModelConfig(TowerConfig):
    """One task's tower, its output head and its loss terms."""

    affine_map: AffineMapConfig | None = None
    pos_weight: float = Field(default=1.0, gt=0.0)
    loss_weight: float = Field(default=1.0, ge=0.0)


class MixtureConfig(BaseConfig):
    """Expert counts of multi_task_type mmoe (num_experts) or ple (num_levels, num_task_experts,
    num_shared_experts); each expert is a copy of model.backbone's architecture."""

    num_experts: int | None = Field(default=None, ge=1)
    num_levels: int | None = Field(default=None, ge=1)
    num_task_experts: int | None = Field(default=None, ge=0)
    num_shared_experts: int | None = Field(default=None, ge=0)


class HistoryTableConfig(BaseConfig):
    """The embedding table of one history id column; its candidate column's ids are looked up in it too.

    One of three kinds:
    - `table: <name>`: the rows of a model.large_embeddings table (its size, id transform, sharding and optimizer),
      so a history item's author is the candidate's `author` row itself;
    - `num_embeddings: N` (the default kind): a table of its own, sharded by torchrec like a large table and updated
      by optimizer.sparse, named `<group>_<column>` (non-alphanumerics as `_`);
    - `replicated: true` with `num_embeddings: N`: an nn.Embedding copied on every rank and trained by the dense
      optimizer, for small vocabularies."""

    table: str | None = None
    num_embeddings: int | None = Field(default=None, ge=1)
    # How raw ids are brought into [0, num_embeddings) (a shared table uses its own; default hash).
    id_transform: Literal["mod", "hash"] | None = None
    replicated: bool = False
    # An own sharded table's placement, as model.large_embeddings' (a shared table is placed by its own entry).
    sharding: Literal["auto", "data_parallel", "table_wise", "row_wise", "column_wise"] = "auto"
    # An own sharded table's torchrec compute kernel, as model.large_embeddings' (auto: the planner's choice).
    compute_kernel: Literal["auto", "fused", "dense", "fused_uvm", "fused_uvm_caching"] = "auto"

    @property
    def transform(self) -> str:
        """The id transform of an own table (replicated or sharded)."""
        return self.id_transform or "hash"

    def problem(self) -> str | None:
        """What is inconsistent in this entry (None when nothing): keys that do not go with its kind."""
        placed = [k for k in ("sharding", "compute_kernel") if getattr(self, k) != "auto"]
        if self.table is not None:
            own = [k for k in ("num_embeddings", "id_transform") if getattr(self, k) is not None]
            own += ["replicated"] if self.replicated else []
            if own or placed:
                return (f"names the large table {self.table!r}, whose rows, id transform and placement it uses: "
                        f"remove {', '.join(own + placed)} (set them on that model.large_embeddings entry)")
            return None
        if self.num_embeddings is None:
            return ("needs `table: <a model.large_embeddings name>` to share a large table, or `num_embeddings` "
                    "for a table of its own")
        if self.replicated and placed:
            return f"is replicated (an nn.Embedding on every rank): {', '.join(placed)} apply to sharded tables only"
        return None

    @model_validator(mode="after")
    def _consistent(self):
        problem = self.problem()
        if problem is not None:
            raise ValueError(f"a history table {problem}")
        return self


class PoolingEncoderConfig(BaseConfig):
    """Masked sum or mean of the item tokens."""

    mode: Literal["sum", "mean"] = "mean"


class TargetAttentionConfig(BaseConfig):
    """DIN: an MLP over [e_j, c, e_j - c, e_j * c] weighs each item; softmax-normalised weights optional."""

    hidden_dims: list[int] = [64, 32]
    activation: Activation = "relu"
    softmax: bool = False


class TransformerEncoderConfig(BaseConfig):
    """Pre-norm self-attention over [history, candidate] with candidate isolation (common/sequence_encoders.py)."""

    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    positions: Literal["learned", "rotary", "none"] = "learned"
    causal: bool = False
    ffn_multiplier: int = Field(default=4, ge=1)


class HistoryEncoderConfig(BaseConfig):
    exactly_one_of = (("pooling", "target_attention", "transformer"),)

    pooling: PoolingEncoderConfig | None = None
    target_attention: TargetAttentionConfig | None = None
    transformer: TransformerEncoderConfig | None = None


class TimeDecayConfig(BaseConfig):
    """An item's weight in pooling and target attention times exp(-softplus(tau) * age), tau learned."""

    # The group's continuous column holding each item's age (data.features.sequences.<group>.continuous).
    column: str
    # The decay's initial time constant, in the column's unit: softplus(tau) starts at 1 / init_hours.
    init_hours: float = Field(default=24.0, gt=0)


class SequenceModelConfig(BaseConfig):
    """How one data.features.sequences group is encoded: token width, a table per id column, the action types and
    the encoder. The group's [encoder output, candidate token] (2 * embedding_dim values) joins the model input."""

    embedding_dim: int = Field(default=32, ge=1)
    tables: dict[str, HistoryTableConfig] = Field(min_length=1)
    # Action types of the group's actions column (ids 0..num_actions-1); the candidate's token uses one more.
    num_actions: int | None = Field(default=None, ge=1)
    encoder: HistoryEncoderConfig
    # Consecutive rows with the same history (one request's candidates) encode it once and score their candidates
    # in one pass (target attention and transformer; exact: no candidate reads another). Off: row by row.
    share_requests: bool = True
    # Per id column with a candidate column: how often and how recently (and by which action) the history holds the
    # candidate's exact id, as 2 + num_actions more inputs (common/history.py).
    match_features: bool = True
    # A Linear from the group's [encoder output, candidate token, match features] down to this many inputs (None:
    # they join the model input as they are; every layer that reads the input grows with them).
    output_dim: int | None = Field(default=None, ge=1)
    # The group's id and action tables' initial weights instead of model.embedding_init.
    init: EmbeddingInitConfig | None = None
    # A learned scalar per action type (1 at first) multiplies each item's weight in pooling and target attention.
    action_weights: bool = False
    # A learned decay of each item's weight with its age (pooling and target attention); null: none.
    time_decay: TimeDecayConfig | None = None
    # The candidate token's continuous block adds a projection (zero at first) of the row's featurized features.
    candidate_features: bool = False
    # The masked mean of the item tokens joins the group's output beside the encoder's (embedding_dim per block).
    mean_pooling: bool = False
    # The actions are ordered (ratings): the match features add the mean action of the matches and of the history.
    ordinal_actions: bool = False
    # transformer: a learned user token u that the history items and the candidates attend to (SPEC's u).
    user_token: bool = False


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
    # towers of one MLP architecture only. Off: measured mixed on the CPU (README: "Compiling the model").
    group_towers: bool = False
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
        bad = [name for name in value if not _MODULE_NAME.match(name)]
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
