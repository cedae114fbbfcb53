"""Model config, engagement histories: how each data.features.sequences group is encoded (token width, the table
of each id column, the action types, the encoder: pooling, target attention or a transformer).

One of the parts of model.* (model_config.py holds ModelConfig, which reads them)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from core.config import BaseConfig
from projects.home.recap.model_config_tables import EmbeddingInitConfig
from projects.home.recap.model_config_towers import Activation


def history_table_name(group: str, column: str) -> str:
    """The name of a history id column's own sharded table: `<group>_<column>`, non-alphanumerics as `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{group}_{column}")


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
