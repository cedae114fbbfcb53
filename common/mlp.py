"""Mlp: Linear -> [BatchNorm] -> ReLU -> [Dropout] per layer size; the last layer is a bare Linear unless
final_layer_activation makes it a layer like the others (what every Mlp whose output feeds another Linear needs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.linear import linear


def glorot_init(linear: nn.Linear) -> None:
    """Glorot-uniform weights and zero bias; PyTorch's default Linear init shrinks the signal about 1.7x per layer,
    which leaves the deep towers of a ranker nearly constant across rows at the start of training."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@dataclass(frozen=True)
class MlpSpec:
    """The shape of an Mlp whose input width is only known where it is used (inside DCN or MaskNet)."""

    layer_sizes: tuple[int, ...]
    batch_norm: bool = False
    batch_norm_affine: bool = True
    batch_norm_momentum: float = 0.1
    dropout: float | None = None
    final_layer_activation: bool = False

    def build(self, in_features: int) -> Mlp:
        """An Mlp of this shape reading `in_features` values."""
        return Mlp(
            in_features,
            list(self.layer_sizes),
            batch_norm=self.batch_norm,
            batch_norm_affine=self.batch_norm_affine,
            batch_norm_momentum=self.batch_norm_momentum,
            dropout=self.dropout,
            final_layer_activation=self.final_layer_activation,
        )


class Mlp(nn.Module):
    """A multi-layer perceptron; `layer_sizes[-1]` is the output width. With final_layer_activation every size is
    a hidden layer (Linear -> [BatchNorm] -> ReLU -> [Dropout]); without, the last is a bare Linear."""

    def __init__(
        self,
        in_features: int,
        layer_sizes: list[int],
        batch_norm: bool = False,
        batch_norm_affine: bool = True,
        batch_norm_momentum: float = 0.1,
        dropout: float | None = None,
        final_layer_activation: bool = False,
    ) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("Mlp needs at least one layer size")
        layers: list[nn.Module] = []
        width = in_features
        for i, size in enumerate(layer_sizes):
            layers.append(nn.Linear(width, size))
            width = size
            if i == len(layer_sizes) - 1 and not final_layer_activation:
                break
            if batch_norm:
                layers.append(nn.BatchNorm1d(size, affine=batch_norm_affine, momentum=batch_norm_momentum))
            layers.append(nn.ReLU())
            if dropout is not None and dropout > 0.0:
                layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                glorot_init(layer)
        self.in_features = in_features
        self.output_dim = layer_sizes[-1]
        # A Linear directly followed by a ReLU runs as one fused product (see common.linear).
        self._fused_relu = [
            isinstance(layer, nn.Linear) and i + 1 < len(self.layers) and isinstance(self.layers[i + 1], nn.ReLU)
            for i, layer in enumerate(self.layers)
        ]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.jit.is_scripting():
            return {"output": self.layers(x)}
        return {"output": self._fused_forward(x)}

    @torch.jit.unused
    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = False
        for layer, fuse in zip(self.layers, self._fused_relu):
            if skip:
                skip = False
            elif isinstance(layer, nn.Linear):
                x = linear(x, layer.weight, layer.bias, fuse)
                skip = fuse
            else:
                x = layer(x)
        return x
