"""Project-agnostic training, optimizer and learning-rate-schedule configs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from core.config import BaseConfig
from core.storage import check_location

# A local path or an object-store URL (s3://BUCKET/PREFIX, gs://...); any other URL scheme is an error.
Location = Annotated[str, AfterValidator(check_location)]


# --- learning-rate schedules ---------------------------------------------------------------------------------------
class PiecewiseConstantConfig(BaseConfig):
    """values[i] while step < boundaries[i]; values[-1] after the last boundary."""

    boundaries: list[int]
    values: list[float]

    @model_validator(mode="after")
    def _lengths(self):
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("piecewise_constant needs exactly one more value than boundaries")
        if any(b2 <= b1 for b1, b2 in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError("piecewise_constant boundaries must be strictly increasing")
        return self


class LinearRampToConstantConfig(BaseConfig):
    """learning_rate * min(1, step / num_ramp_steps)."""

    learning_rate: float = Field(gt=0.0)
    num_ramp_steps: int = Field(ge=1)


class LinearRampToCosineConfig(BaseConfig):
    """Linear ramp to learning_rate, then cosine decay to final_learning_rate at final_num_steps (omitted: the
    training's last step, num_train_steps or ceil(num_epochs x batches per epoch / gradient_accumulation_steps))."""

    learning_rate: float = Field(gt=0.0)
    final_learning_rate: float = Field(ge=0.0)
    num_ramp_steps: int = Field(ge=0)
    final_num_steps: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.final_num_steps is not None and self.final_num_steps <= self.num_ramp_steps:
            raise ValueError("linear_ramp_to_cosine needs final_num_steps > num_ramp_steps")
        return self


class LearningRateConfig(BaseConfig):
    exactly_one_of = (("constant", "piecewise_constant", "linear_ramp_to_constant", "linear_ramp_to_cosine"),)

    constant: float | None = Field(default=None, gt=0.0)
    piecewise_constant: PiecewiseConstantConfig | None = None
    linear_ramp_to_constant: LinearRampToConstantConfig | None = None
    linear_ramp_to_cosine: LinearRampToCosineConfig | None = None


# --- optimizers ------------------------------------------------------------------------------------------------------
class AdamConfig(BaseConfig):
    beta_1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(default=0.999, ge=0.0, lt=1.0)
    epsilon: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)


class MultiTaskLearningRates(BaseConfig):
    """One schedule per task tower (names must equal the model's tasks) and one for backbone and shared layers."""

    tower_learning_rates: dict[str, LearningRateConfig]
    backbone_learning_rate: LearningRateConfig


class DenseOptimizerConfig(BaseConfig):
    exactly_one_of = (("adam", "adamw"),)
    at_most_one_of = (("learning_rate", "multi_task_learning_rates"),)

    adam: AdamConfig | None = None
    adamw: AdamConfig | None = None
    # A single schedule for every parameter group ...
    learning_rate: LearningRateConfig | None = None
    # ... or one per tower plus one for the backbone and shared layers.
    multi_task_learning_rates: MultiTaskLearningRates | None = None

    @model_validator(mode="after")
    def _has_schedule(self):
        if self.learning_rate is None and self.multi_task_learning_rates is None:
            raise ValueError("set learning_rate or multi_task_learning_rates")
        return self


SPARSE_EPSILON_DEFAULT = 1e-8
# adam: the dense layers' usual rate, as in peer libraries; it holds on small data with many rows per id, where 0.03
# overfits the tables within an epoch, and loses a little where ids are seen a few times each
# (docs/benchmarks/defaults.md, and docs/guides/large-tables.md "Id-heavy data", which measures 0.01-0.03 there).
# The others: the best measured per type with `recap benchmark ids`; sgd keeps the old 0.05.
SPARSE_LEARNING_RATE_DEFAULTS = {"adam": 0.001, "rowwise_adagrad": 0.2, "adagrad": 0.1, "sgd": 0.05}


class SparseOptimizerConfig(BaseConfig):
    """The optimizer of the large embedding tables: fused into the backward pass where fbgemm's kernel on the device
    runs it, else applied after backward to the looked-up rows of data-parallel tables (core/sparse_optimizers.py)."""

    # adam wins on id-heavy data ([Id-heavy data](../guides/large-tables.md#id-heavy-data-which-settings)); on CPU
    # it keeps the tables data_parallel.
    type: Literal["sgd", "adagrad", "rowwise_adagrad", "adam"] = "adam"
    # Unset: the type's default in SPARSE_LEARNING_RATE_DEFAULTS.
    learning_rate: float | None = Field(default=None, gt=0.0)
    # The denominator's epsilon of adagrad, rowwise_adagrad and adam (default 1e-8). Plain SGD has no denominator, so
    # an epsilon with type sgd is an error rather than a setting that is silently ignored; it resolves to null there,
    # which keeps a dumped config loadable.
    epsilon: float | None = Field(default=None, gt=0.0)
    # Adam's moment decay rates (adam only).
    beta_1: float | None = Field(default=None, ge=0.0, lt=1.0)
    beta_2: float | None = Field(default=None, ge=0.0, lt=1.0)
    # Weight decay of the rows a step updates: "decoupled" subtracts learning_rate * weight_decay * w from each
    # updated row, "l2" adds weight_decay * w to its gradient before the optimizer's maths.
    weight_decay: float = Field(default=0.0, ge=0.0)
    weight_decay_mode: Literal["decoupled", "l2"] = "decoupled"

    @model_validator(mode="after")
    def _settings_match_type(self):
        if self.learning_rate is None:
            self.learning_rate = SPARSE_LEARNING_RATE_DEFAULTS[self.type]
        if self.type == "sgd":
            if self.epsilon is not None:
                raise ValueError("epsilon is meaningless for type sgd (plain SGD has no denominator): remove "
                                 "epsilon, or choose type adagrad, rowwise_adagrad or adam")
        elif self.epsilon is None:
            self.epsilon = SPARSE_EPSILON_DEFAULT
        if self.type != "adam":
            if self.beta_1 is not None or self.beta_2 is not None:
                raise ValueError(f"beta_1 and beta_2 are Adam's settings; type {self.type} has no moments")
        else:
            self.beta_1 = 0.9 if self.beta_1 is None else self.beta_1
            self.beta_2 = 0.999 if self.beta_2 is None else self.beta_2
        return self


class OptimizerConfig(BaseConfig):
    dense: DenseOptimizerConfig
    sparse: SparseOptimizerConfig = SparseOptimizerConfig()


# --- the training loop -----------------------------------------------------------------------------------------------
class EarlyStoppingConfig(BaseConfig):
    """Model selection on the periodic evaluation (training.eval_every_n): the best checkpoint is marked
    (checkpoints/best.json) and kept, and training stops after `patience` evaluations without improvement."""

    # auc and rce are maximized, loss (log loss) minimized; ndcg is the per-request NDCG@ndcg_k of the score or a
    # task (needs evaluation.request_column).
    metric: Literal["auc", "rce", "loss", "ndcg"] = "auc"
    # A task name, `mean` (the mean over tasks; for loss the loss-weighted sum) or, for ndcg, `score`.
    task: str = "mean"
    # The validation set it is measured on (one of training.eval_datasets); unset: the first of them.
    dataset: str | None = None
    ndcg_k: int = Field(default=10, ge=1)
    # Evaluations in a row without an improvement of more than min_delta before training stops; null: never stop,
    # only keep and mark the best checkpoint.
    patience: int | None = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class CompileConfig(BaseConfig):
    """torch.compile of the model's dense part for training, evaluation and prediction (core/compile.py); the sparse
    embedding lookup always runs eagerly, outside the compiled graph."""

    # off; dense: the dense model after the sparse lookup; dense+loss: also the loss, as a graph of its own.
    target: Literal["off", "dense", "dense+loss"] = "off"
    # torch.compile's mode. reduce-overhead adds CUDA graphs (CUDA only; on the CPU it compiles as default does).
    mode: Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"] = "default"
    # inductor (generated kernels); aot_eager traces forward and backward but runs them with eager kernels: no code
    # generation, a quick way to tell a tracing problem from a code-generation one (and to compile in seconds).
    backend: Literal["inductor", "aot_eager"] = "inductor"
    # inductor calls its generated kernels from generated C++ instead of Python: less overhead per kernel, which
    # shows on small models (the demo's dense model in bf16 on a CPU: 1.1x the compiled step), for a longer first
    # compile (about 10x on a cold cache).
    cpp_wrapper: bool = False

    @field_validator("target", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` as false.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _mode_needs_target(self):
        if self.target == "off" and self.mode != "default":
            raise ValueError(f"mode {self.mode} applies only when target is dense or dense+loss (it is off)")
        if self.target == "off" and self.backend != "inductor":
            raise ValueError(f"backend {self.backend} applies only when target is dense or dense+loss (it is off)")
        if self.cpp_wrapper and (self.target == "off" or self.backend != "inductor"):
            raise ValueError(f"cpp_wrapper applies only to backend inductor with target dense or dense+loss (target "
                             f"{self.target}, backend {self.backend})")
        if self.backend != "inductor" and self.mode != "default":
            raise ValueError(f"mode {self.mode} is an inductor mode: backend {self.backend} takes only default")
        return self


class TrainingConfig(BaseConfig):
    exactly_one_of = (("num_train_steps", "num_epochs"),)

    # Checkpoints, TensorBoard logs and evaluation reports go under this directory or object-store prefix.
    save_dir: Location
    num_train_steps: int | None = Field(default=None, ge=1)
    num_epochs: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    # Clips the global gradient norm of the dense parameters only: the sharded embedding tables' optimizer runs fused
    # inside backward (their rows are updated as their gradients are computed), so their gradients are never seen.
    clip_grad_norm: float | None = Field(default=None, gt=0.0)
    mixed_precision: Literal["fp32", "bf16"] = "fp32"
    # torch.compile of the dense part ([Compiling the model](../benchmarks/performance.md#compiling-the-model));
    # off by default.
    compile: CompileConfig = CompileConfig()
    train_log_every_n: int = Field(default=50, ge=1)
    checkpoint_every_n: int = Field(default=1000, ge=1)
    keep_last_k: int = Field(default=3, ge=1)
    # Run the periodic evaluation every eval_every_n steps and after the last step.
    eval_every_n: int | None = Field(default=None, ge=1)
    # Collective batches per validation set in periodic evaluation (needs eval_every_n); unset evaluates all of it.
    num_eval_steps: int | None = Field(default=None, ge=1)
    # The validation sets periodic evaluation runs on (names in the project's validation sets); empty means all.
    # Keep a held-out test set out of it so that choices made while watching training never see the test set.
    eval_datasets: list[str] = []
    # Keep the best checkpoint by a validation metric and stop when it no longer improves (needs eval_every_n).
    early_stopping: EarlyStoppingConfig | None = None
    # Initialize weights (only) from another run's checkpoint directory.
    warm_start_from: Location | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


def total_train_steps(config: TrainingConfig, steps_per_epoch: int | None) -> int | None:
    """The optimizer steps training will take: num_train_steps, else num_epochs x batches per epoch over the
    accumulation steps (None when neither is known)."""
    if config.num_train_steps is not None:
        return config.num_train_steps
    if steps_per_epoch is not None and config.num_epochs is not None:
        return -(-config.num_epochs * steps_per_epoch // config.gradient_accumulation_steps)
    return None
