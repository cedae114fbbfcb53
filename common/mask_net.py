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
import torch.nn.functional as F
from torch import nn

from common.activation import activation_module
from common.linear import linear
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
        for layer in (self.mask[0], self.mask[2], self.hidden):
            glorot_init(layer)
        self.output_layer_norm = nn.LayerNorm(output_size)
        self.activation = activation_module(activation)
        self.output_dim = output_size
        self.has_input_layer_norm = input_layer_norm

    def instance_mask(self, mask_input: torch.Tensor) -> torch.Tensor:
        """m = W2 ReLU(W1 e + b1) + b2."""
        w1 = self.mask[0]
        w2 = self.mask[2]
        return linear(linear(mask_input, w1.weight, w1.bias, relu=True), w2.weight, w2.bias)

    def _output(self, masked: torch.Tensor) -> torch.Tensor:
        return self.activation(self.output_layer_norm(linear(masked, self.hidden.weight, self.hidden.bias)))

    def forward(self, hidden: torch.Tensor, mask_input: torch.Tensor) -> torch.Tensor:
        return self._output(self.input_layer_norm(hidden) * self.instance_mask(mask_input))

    def forward_standardized(self, standardized: torch.Tensor, mask_input: torch.Tensor) -> torch.Tensor:
        """forward() given the hidden input already standardized by a LayerNorm without affine (with this block's
        eps): only this block's scale and shift are applied here. Parallel blocks share one standardization."""
        norm = self.input_layer_norm
        if not isinstance(norm, nn.LayerNorm):
            raise ValueError("forward_standardized needs a block with an input LayerNorm")
        hidden = standardized
        dtype = standardized.dtype
        if norm.weight is not None and norm.bias is not None:
            hidden = torch.addcmul(norm.bias.to(dtype), standardized, norm.weight.to(dtype))
        elif norm.weight is not None:
            hidden = standardized * norm.weight.to(dtype)
        elif norm.bias is not None:
            hidden = standardized + norm.bias.to(dtype)
        return self._output(hidden * self.instance_mask(mask_input).to(dtype))


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
        # Parallel blocks all LayerNorm the same input: standardize it once, each block applies its own affine.
        norms = [m.input_layer_norm for m in modules if isinstance(m.input_layer_norm, nn.LayerNorm)]
        self.share_input_standardization = parallel and len(norms) > 1 and len({n.eps for n in norms}) == 1
        self._input_eps = norms[0].eps if norms else 1e-5

    @torch.jit.unused
    def _parallel_shared_standardization(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # Cast the shared input once instead of once per block (autocast casts non-parameters on every use) and
            # standardize it in that dtype (statistics accumulated in float32 by the kernel): the masked products
            # then stay in the autocast dtype that the next matmul reads anyway, without a float32 copy between.
            x = x.to(torch.get_autocast_dtype(device))
            with torch.autocast(device, enabled=False):
                standardized = F.layer_norm(x, [x.shape[-1]], eps=self._input_eps)
        else:
            standardized = F.layer_norm(x, [x.shape[-1]], eps=self._input_eps)
        outs = [
            block.forward_standardized(standardized, x) if block.has_input_layer_norm else block(x, x)
            for block in self.blocks
        ]
        return torch.cat(outs, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.parallel:
            if self.share_input_standardization and not torch.jit.is_scripting():
                out = self._parallel_shared_standardization(x)
            else:
                out = torch.cat([block(x, x) for block in self.blocks], dim=1)
        else:
            out = x
            for block in self.blocks:
                out = block(out, x)
        if self.mlp is not None:
            out = self.mlp(out)["output"]
        return {"output": out}
