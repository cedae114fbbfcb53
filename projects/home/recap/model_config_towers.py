"""Model config, towers and layers: the MLP, DCN and MaskNet tower architectures (a task's tower, the shared backbone,
each expert of a mixture), a task's head and loss terms, and the expert counts of MMoE / PLE.

One of the parts of model.* (model_config.py holds ModelConfig, which reads them); config modules stay below the
model code (model/ -> schema.py -> model_config.py -> model_config_*.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import BaseConfig

Activation = Literal["relu", "gelu", "silu", "none"]


class BatchNormConfig(BaseConfig):
    affine: bool = True
    momentum: float = Field(default=0.1, gt=0.0, le=1.0)


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
