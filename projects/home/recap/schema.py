"""The whole recap experiment config (one YAML file per experiment) and the checks that span its sections."""

from __future__ import annotations

import os
from collections.abc import Iterable

from pydantic import Field, field_validator, model_validator

from core.config import BaseConfig, load_config
from core.log import get_logger
from core.train_config import OptimizerConfig, TrainingConfig
from projects.home.recap.data.config import DataConfig
from projects.home.recap.model_config import ModelConfig

logger = get_logger(__name__)


class EvaluationConfig(BaseConfig):
    """What the offline evaluation computes beyond the per-task metrics.

    stratifiers, group_auc_column and curve_points apply to every evaluation, `recap evaluate`'s and the periodic
    one during training; `datasets` only picks `recap evaluate`'s default sets (training.eval_datasets picks the
    periodic evaluation's)."""

    # Discrete feature columns whose values split the metrics ("metrics per stratifier value").
    stratifiers: list[str] = []
    # An id column (in data.features.ids or discrete) for AUC averaged within each group (user).
    group_auc_column: str | None = None
    # An id column (in data.features.ids or discrete) naming each impression's request (the candidates shown
    # together): the evaluation adds per-request ranking metrics (NDCG@k of model.scoring's score and of each task,
    # and each task's AUC within requests).
    request_column: str | None = None
    # The NDCG cut-offs.
    ndcg_k: list[int] = Field(default=[5, 10], min_length=1)
    # The sets `recap evaluate` (and --watch) evaluates when no --dataset is given; empty means all of
    # data.validation. Periodic evaluation during training runs on training.eval_datasets.
    datasets: list[str] = []
    # Points per curve in the report's plots.
    curve_points: int = Field(default=200, ge=10)

    @field_validator("ndcg_k")
    @classmethod
    def _cut_offs(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"ndcg_k must be distinct positive cut-offs, got {value}")
        return sorted(value)


class RecapConfig(BaseConfig):
    """One experiment. Cross-section rules worth knowing:

    - training.clip_grad_norm clips the dense parameters' gradients only: the large (sharded) embedding tables are
      updated by optimizer.sparse fused inside backward, before any clipping could see their gradients.
    - Periodic evaluation (training.eval_every_n) runs on training.eval_datasets (default: every set in
      data.validation), so it needs at least one; evaluation.datasets only picks the sets `recap evaluate` uses
      when no --dataset is given.
    - training.num_eval_steps limits periodic evaluation and so needs training.eval_every_n.
    """

    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    optimizer: OptimizerConfig
    evaluation: EvaluationConfig = EvaluationConfig()

    def _sequences_agree(self) -> None:
        groups = self.data.features.sequences
        extra = [g for g in self.model.sequences if g not in groups]
        if extra:
            raise ValueError(f"model.sequences {extra} are not data.features.sequences groups ({list(groups)})")
        for name, group in groups.items():
            _check_sequence_group(name, group, self.model.sequences.get(name))
            group._num_actions = self.model.sequences[name].num_actions

    @model_validator(mode="after")
    def _sections_agree(self):
        data_tasks = set(self.data.tasks)
        missing = [t for t in self.model.tasks if t not in data_tasks]
        if missing:
            raise ValueError(
                f"model.tasks {missing} have no label in data.tasks (known: {sorted(data_tasks)}); "
                "tasks are matched to labels by name"
            )
        mtl = self.optimizer.dense.multi_task_learning_rates
        if mtl is not None and set(mtl.tower_learning_rates) != set(self.model.tasks):
            raise ValueError(
                "optimizer.dense.multi_task_learning_rates.tower_learning_rates must name exactly the model's "
                f"tasks: extra {sorted(set(mtl.tower_learning_rates) - set(self.model.tasks))}, "
                f"missing {sorted(set(self.model.tasks) - set(mtl.tower_learning_rates))}"
            )
        features = self.data.features
        discrete = {c.name for c in features.discrete if c.length is None}
        sparse = set(features.sparse)
        any_discrete = {c.name for c in features.discrete}
        for i, emb in enumerate(self.model.small_embeddings):
            # Scalar or fixed-length list: a list column's slots share the table and are concatenated.
            if emb.feature not in any_discrete:
                raise ValueError(f"model.small_embeddings[{i}].feature {emb.feature!r} is not a discrete column")
        for i, table in enumerate(self.model.large_embeddings):
            for name in table.feature_names:
                if name not in sparse:
                    raise ValueError(f"model.large_embeddings[{i}] feature {name!r} is not in data.features.sparse")
        tables_of = [n for t in self.model.large_embeddings for n in t.feature_names]
        if len(tables_of) != len(set(tables_of)):
            raise ValueError("a sparse feature is assigned to two large embedding tables")
        numeric = self.model.numeric_embeddings
        if numeric is not None:
            continuous = [c.name for c in features.continuous]
            if not continuous:
                raise ValueError("model.numeric_embeddings: data.features.continuous is empty")
            for name in numeric.features or []:
                if name not in continuous:
                    raise ValueError(f"model.numeric_embeddings.features: {name!r} is not a continuous column "
                                     f"(known: {continuous})")
        self._sequences_agree()
        pos = self.model.position_debias
        if pos is not None and pos.feature not in discrete:
            raise ValueError(f"model.position_debias.feature {pos.feature!r} is not a scalar discrete column")
        for s in self.evaluation.stratifiers:
            if s not in discrete:
                raise ValueError(f"evaluation.stratifiers: {s!r} is not a scalar discrete column")
        group = self.evaluation.group_auc_column
        if group is not None and group not in discrete | set(features.ids):
            raise ValueError(f"evaluation.group_auc_column {group!r} must be a discrete or id column")
        request = self.evaluation.request_column
        if request is not None and request not in discrete | set(features.ids):
            raise ValueError(f"evaluation.request_column {request!r} must be a scalar discrete column or an id column "
                             f"(data.features.ids: {list(features.ids)})")
        used = {e.feature for e in self.model.small_embeddings} | set(self.evaluation.stratifiers)
        used |= {pos.feature} if pos is not None else set()
        used |= {c for c in (group, request) if c is not None}
        for i, col in enumerate(features.discrete):
            if col.name not in used:
                # Not an error: a column may be kept in the schema for a later experiment.
                logger.warning("data.features.discrete[%d] %r is read but unused: no model.small_embeddings entry, "
                               "not model.position_debias.feature, not an evaluation stratifier, group_auc_column or "
                               "request_column",
                               i, col.name)
        for name in self.evaluation.datasets:
            if name not in self.data.validation:
                raise ValueError(f"evaluation.datasets: {name!r} is not in data.validation")
        training = self.training
        if training.eval_every_n is not None and not self.data.validation:
            raise ValueError(
                f"training.eval_every_n is {training.eval_every_n} but data.validation is empty: periodic "
                "evaluation needs a validation set (add one to data.validation or set training.eval_every_n: null)"
            )
        if training.num_eval_steps is not None and training.eval_every_n is None:
            raise ValueError(
                f"training.num_eval_steps is {training.num_eval_steps} but training.eval_every_n is null: "
                "num_eval_steps only limits periodic evaluation (set eval_every_n or remove num_eval_steps)"
            )
        for name in training.eval_datasets:
            if name not in self.data.validation:
                raise ValueError(f"training.eval_datasets: {name!r} is not in data.validation "
                                 f"(known: {sorted(self.data.validation)})")
        if training.early_stopping is not None:
            _check_early_stopping(self)
        return self


def _check_early_stopping(config) -> None:
    """training.early_stopping names a value the periodic evaluation produces; fills in its dataset."""
    training, stopping = config.training, config.training.early_stopping
    if training.eval_every_n is None:
        raise ValueError("training.early_stopping needs the periodic evaluation: set training.eval_every_n")
    evaluated = list(training.eval_datasets or config.data.validation)
    if stopping.dataset is None:
        stopping.dataset = evaluated[0]
    elif stopping.dataset not in evaluated:
        raise ValueError(f"training.early_stopping.dataset {stopping.dataset!r} is not evaluated during training "
                         f"(training.eval_datasets: {evaluated})")
    tasks = list(config.model.tasks)
    allowed = ["mean", *tasks] + (["score"] if stopping.metric == "ndcg" else [])
    if stopping.metric == "ndcg":
        allowed.remove("mean")
        if config.evaluation.request_column is None:
            raise ValueError("training.early_stopping.metric ndcg needs evaluation.request_column (the requests "
                             "NDCG ranks within)")
        if stopping.ndcg_k not in config.evaluation.ndcg_k:
            raise ValueError(f"training.early_stopping.ndcg_k {stopping.ndcg_k} is not one of evaluation.ndcg_k "
                             f"{config.evaluation.ndcg_k}")
        if stopping.task == "mean":
            stopping.task = "score" if config.model.scoring is not None else stopping.task
        if stopping.task == "score" and config.model.scoring is None:
            raise ValueError("training.early_stopping.task score needs model.scoring (the ranking score)")
    if stopping.task not in allowed:
        raise ValueError(f"training.early_stopping.task {stopping.task!r} is not one of {allowed}")


def _check_sequence_group(name: str, group, model) -> None:
    """A data history group and its model entry describe the same columns."""
    if model is None:
        raise ValueError(f"data.features.sequences.{name} has no model.sequences.{name} (its encoder and tables)")
    columns = [c.name for c in group.ids]
    if set(model.tables) != set(columns):
        raise ValueError(f"model.sequences.{name}.tables must name exactly the group's id columns {columns}, got "
                         f"{sorted(model.tables)}")
    if (group.actions is None) != (model.num_actions is None):
        raise ValueError(f"model.sequences.{name}.num_actions is "
                         + ("set but the group has no actions column" if group.actions is None else
                            f"needed: the group reads action types from {group.actions!r}"))
    where = f"model.sequences.{name}"
    transformer = model.encoder.transformer
    if model.action_weights and group.actions is None:
        raise ValueError(f"{where}.action_weights needs the group's actions column")
    if model.ordinal_actions and group.actions is None:
        raise ValueError(f"{where}.ordinal_actions needs the group's actions column")
    if model.time_decay is not None and model.time_decay.column not in group.continuous:
        raise ValueError(f"{where}.time_decay.column {model.time_decay.column!r} is not one of the group's continuous "
                         f"columns {list(group.continuous)}")
    if transformer is not None and (model.action_weights or model.time_decay is not None):
        raise ValueError(f"{where}: action_weights and time_decay weigh items in pooling and target attention, "
                         f"not in the transformer (set {where}.action_weights: false and {where}.time_decay: null "
                         "with it)")
    if model.user_token and transformer is None:
        raise ValueError(f"{where}.user_token needs the transformer encoder")
    # A token is one embedding_dim block per id column, action column and continuous set (or candidate features).
    width = model.embedding_dim * (len(group.ids) + (group.actions is not None)
                                   + bool(group.continuous or model.candidate_features))
    if transformer is not None and width % transformer.num_heads:
        raise ValueError(f"model.sequences.{name}: the token width {width} (embedding_dim x {width // model.embedding_dim}"
                         f" blocks) is not a multiple of transformer.num_heads {transformer.num_heads}")
    if transformer is not None and transformer.positions == "rotary" and (width // transformer.num_heads) % 2:
        raise ValueError(f"model.sequences.{name}: rotary positions need an even head width (token width {width} / "
                         f"num_heads {transformer.num_heads})")


def load_recap_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> RecapConfig:
    """Load and validate a recap experiment YAML (with ${ENV} substitution and --set overrides)."""
    return load_config(path, RecapConfig, overrides)
