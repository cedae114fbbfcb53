"""MaskNet: MaskBlocks (instance-guided masks on a hidden input) run in parallel or in series, with an MLP on top.

One block, for a hidden input h and the mask input e:
    h <- LayerNorm(h)                                   (if input_layer_norm)
    m = W2 ReLU(W1 e + b1) + b2                         W1: dim(e) -> agg, W2: agg -> dim(h)
    out = act(LayerNorm(W (h * m) + b))
with agg = int(dim(e) * reduction_factor) or aggregation_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.activation import activation_module
from common.mlp import MlpSpec, glorot_init


@dataclass(frozen=True)
class MaskBlockSpec:
    """One block of a MaskNet; exactly one of reduction_factor and aggregation_size sets the mask's hidden width."""

    output_size: int
    reduction_factor: float | None = None
    aggregation_size: int | None = None
    input_layer_norm: bool = True
    activation: str = "relu"

    def mask_hidden_size(self, mask_input_dim: int) -> int:
        """The width `agg` of the mask's hidden layer for a mask input of `mask_input_dim` values."""
        if (self.reduction_factor is None) == (self.aggregation_size is None):
            raise ValueError("a MaskBlock takes exactly one of reduction_factor and aggregation_size")
        if self.aggregation_size is not None:
            return self.aggregation_size
        agg = int(mask_input_dim * self.reduction_factor)
        if agg < 1:
            raise ValueError(
                f"MaskBlock reduction_factor {self.reduction_factor} on a {mask_input_dim}-wide input gives "
                "an empty mask layer"
            )
        return agg


class MaskBlock(nn.Module):
    """out = act(LayerNorm(W (LN(h) * (W2 ReLU(W1 e + b1) + b2)) + b))."""

    def __init__(
        self,
        hidden_dim: int,
        mask_input_dim: int,
        output_size: int,
        aggregation_size: int,
        input_layer_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.input_layer_norm = nn.LayerNorm(hidden_dim) if input_layer_norm else nn.Identity()
        self.mask = nn.Sequential(
            nn.Linear(mask_input_dim, aggregation_size), nn.ReLU(), nn.Linear(aggregation_size, hidden_dim)
        )
        self.hidden = nn.Linear(hidden_dim, output_size)
        for linear in (self.mask[0], self.mask[2], self.hidden):
            glorot_init(linear)
        self.output_layer_norm = nn.LayerNorm(output_size)
        self.activation = activation_module(activation)
        self.output_dim = output_size

    def forward(self, hidden: torch.Tensor, mask_input: torch.Tensor) -> torch.Tensor:
        masked = self.input_layer_norm(hidden) * self.mask(mask_input)
        return self.activation(self.output_layer_norm(self.hidden(masked)))


class MaskNet(nn.Module):
    """Parallel: every block reads (x, x), outputs concatenated. Serial: block i reads (block i-1's output, x)."""

    def __init__(
        self,
        in_features: int,
        blocks: list[MaskBlockSpec],
        parallel: bool = True,
        mlp: MlpSpec | None = None,
    ) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("MaskNet needs at least one MaskBlock")
        self.parallel = parallel
        modules = []
        hidden_dim = in_features
        for spec in blocks:
            modules.append(
                MaskBlock(
                    hidden_dim=in_features if parallel else hidden_dim,
                    mask_input_dim=in_features,
                    output_size=spec.output_size,
                    aggregation_size=spec.mask_hidden_size(in_features),
                    input_layer_norm=spec.input_layer_norm,
                    activation=spec.activation,
                )
            )
            hidden_dim = spec.output_size
        self.blocks = nn.ModuleList(modules)
        width = sum(spec.output_size for spec in blocks) if parallel else blocks[-1].output_size
        self.mlp = mlp.build(width) if mlp is not None else None
        self.output_dim = self.mlp.output_dim if self.mlp is not None else width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.parallel:
            out = torch.cat([block(x, x) for block in self.blocks], dim=1)
        else:
            out = x
            for block in self.blocks:
                out = block(out, x)
        if self.mlp is not None:
            out = self.mlp(out)["output"]
        return {"output": out}
