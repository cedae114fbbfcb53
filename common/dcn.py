"""DCN v2: cross layers x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (W_l = U_l V_l^T when low rank), with an MLP."""

from __future__ import annotations

import torch
from torch import nn

from common.linear import linear
from common.mlp import MlpSpec


class CrossLayer(nn.Module):
    """One cross layer; `projection_dim` set makes W = U V^T of rank projection_dim."""

    def __init__(self, in_features: int, projection_dim: int | None = None) -> None:
        super().__init__()
        if projection_dim is None:
            self.weight: nn.Module = nn.Linear(in_features, in_features)
        else:
            # V^T projects down (no bias), U projects back up and carries b.
            self.weight = nn.Sequential(
                nn.Linear(in_features, projection_dim, bias=False), nn.Linear(projection_dim, in_features)
            )

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if isinstance(weight, nn.Linear):
            projected = linear(x, weight.weight, weight.bias)
        else:
            projected = linear(linear(x, weight[0].weight, None), weight[1].weight, weight[1].bias)
        return torch.addcmul(x, x0, projected)


class Dcn(nn.Module):
    """Cross network, then (stacked) or beside (parallel, concatenated) an MLP, then an optional output MLP."""

    def __init__(
        self,
        in_features: int,
        num_cross_layers: int,
        projection_dim: int | None = None,
        stacked_mlp: MlpSpec | None = None,
        parallel_mlp: MlpSpec | None = None,
        output_mlp: MlpSpec | None = None,
    ) -> None:
        super().__init__()
        if num_cross_layers < 1:
            raise ValueError("Dcn needs at least one cross layer")
        if stacked_mlp is not None and parallel_mlp is not None:
            raise ValueError("Dcn takes a stacked MLP or a parallel MLP, not both")
        self.cross_layers = nn.ModuleList(
            CrossLayer(in_features, projection_dim) for _ in range(num_cross_layers)
        )
        self.stacked_mlp = stacked_mlp.build(in_features) if stacked_mlp is not None else None
        self.parallel_mlp = parallel_mlp.build(in_features) if parallel_mlp is not None else None
        width = in_features
        if self.stacked_mlp is not None:
            width = self.stacked_mlp.output_dim
        if self.parallel_mlp is not None:
            width = in_features + self.parallel_mlp.output_dim
        self.output_mlp = output_mlp.build(width) if output_mlp is not None else None
        self.output_dim = self.output_mlp.output_dim if self.output_mlp is not None else width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        crossed = x
        for layer in self.cross_layers:
            crossed = layer(x, crossed)
        out = crossed
        if self.stacked_mlp is not None:
            out = self.stacked_mlp(crossed)["output"]
        if self.parallel_mlp is not None:
            out = torch.cat([crossed, self.parallel_mlp(x)["output"]], dim=1)
        if self.output_mlp is not None:
            out = self.output_mlp(out)["output"]
        return {"output": out}
