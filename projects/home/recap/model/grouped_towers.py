"""The task heads of one architecture evaluated as one grouped computation: the same maths as running each head in
turn, in a few large products instead of many small ones.

Small models spend their time between products, not in them: ten towers of one 64-wide layer are ten small matmuls,
ten ReLUs, ten one-output products and ten affine maps per step, forward and backward. Grouped, the heads' weights
are stacked at each call (torch.stack, so the parameters, their names in the state_dict, the per-tower learning
rates and the checkpoints stay exactly those of the separate heads) and run as
  - the first layer, when every head reads the same input: one product x [B, in] @ [in, T*out] (+ ReLU);
  - every other layer, and the first under an expert mixture (one input per task): one batched product
    [T, B, in] @ [T, in, out] (torch.baddbmm);
  - the final logits: the per-task dot products of the last hidden layer with each head's final weight;
  - the affine maps: one multiply-add with the stacked scales and biases (1 and 0 for heads without one).
Heads group when every tower is an Mlp of Linear -> ReLU [-> Dropout] layers (no batch norm, whose running
statistics belong to each head) with the same widths and dropout. Dropout draws one mask for all heads at once: the
same distribution as separate heads, not the same random numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.linear import linear
from common.mlp import Mlp

# One entry per Linear layer of a tower: (ReLU after it, dropout probability after it).
TowerPlan = tuple[tuple[bool, float], ...]


def _tower_plan(tower: nn.Module) -> TowerPlan | None:
    """The layer pattern of an Mlp tower, or None when it is not a Linear -> ReLU [-> Dropout] stack."""
    if not isinstance(tower, Mlp):
        return None
    plan: list[tuple[bool, float]] = []
    for layer in tower.layers:
        if isinstance(layer, nn.Linear):
            plan.append((False, 0.0))
        elif isinstance(layer, nn.ReLU) and plan and not plan[-1][0]:
            plan[-1] = (True, 0.0)
        elif isinstance(layer, nn.Dropout) and plan and plan[-1][1] == 0.0:
            plan[-1] = (plan[-1][0], float(layer.p))
        else:
            return None  # batch norm, or an order the grouped maths does not reproduce
    return tuple(plan)


def group_plan(heads: Sequence[nn.Module]) -> TowerPlan | None:
    """The shared layer pattern of the heads (TaskHead: tower, final_logit, affine_map) when they can run as one
    grouped computation, else None (also for a single head: nothing to group)."""
    if len(heads) < 2:
        return None
    plans = {_tower_plan(h.tower) for h in heads}
    if len(plans) != 1 or None in plans:
        return None
    shapes = {tuple(p.shape for p in h.parameters() if not _is_affine(h, p)) for h in heads}
    affine_ok = all(isinstance(h.affine_map, nn.Identity) or hasattr(h.affine_map, "scale") for h in heads)
    return plans.pop() if len(shapes) == 1 and affine_ok else None


def _is_affine(head: nn.Module, p: torch.Tensor) -> bool:
    return any(p is q for q in head.affine_map.parameters())


def grouped_logits(heads: Sequence[nn.Module], plan: TowerPlan, x: torch.Tensor | list[torch.Tensor],
                   training: bool) -> torch.Tensor:
    """The heads' logits [B, T], as torch.cat([head(input) for ...], dim=1) computes them: `x` is the input every
    head reads [B, in], or one input per head (an expert mixture's task inputs)."""
    num = len(heads)
    towers = [[m for m in h.tower.layers if isinstance(m, nn.Linear)] for h in heads]
    h = x if isinstance(x, torch.Tensor) else torch.stack(x)  # [B, in] shared, or [T, B, in]
    shared = isinstance(x, torch.Tensor)
    for i, (relu, dropout) in enumerate(plan):
        weight = _stacked([t[i].weight for t in towers])  # [T, out, in]
        bias = _stacked([t[i].bias for t in towers])  # [T, out]
        if i == 0 and shared:
            width = weight.shape[1]
            # One product for every head: x [B, in] @ [in, T*out]; rows stay [B, T, out].
            y = linear(x, weight.reshape(num * width, -1), bias.reshape(-1), relu)
            h = y.view(-1, num, width).transpose(0, 1)  # [T, B, out], a view
        else:
            # Under autocast baddbmm runs in bf16 as the heads' Linear layers do.
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))  # [T, B, out]
            if relu:
                h = F.relu(h)
        if dropout > 0.0:
            h = F.dropout(h, dropout, training)
    final = torch.stack([hd.final_logit.weight.reshape(-1) for hd in heads])  # [T, k]
    final_bias = torch.cat([hd.final_logit.bias for hd in heads])  # [T]
    logits = torch.baddbmm(final_bias.view(num, 1, 1), h, final.unsqueeze(2)).squeeze(2)  # [T, B]
    scale, shift = _affine(heads, logits)
    return (logits * scale + shift).t()


def _stacked(params: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack of the heads' parameters; under autocast in its dtype, as each head's layer would read them (the
    casts and the stacked copy then move half the bytes of stacking the float32 parameters and casting the stack)."""
    device = params[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return torch.stack([p.to(dtype) for p in params])
    return torch.stack(params)


def _affine(heads: Sequence[nn.Module], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' stacked affine scales and biases [T, 1] (1 and 0 where a head has none)."""
    one, zero = like.new_ones(()), like.new_zeros(())
    scale = torch.stack([one if isinstance(h.affine_map, nn.Identity) else h.affine_map.scale.to(like.dtype)
                         for h in heads])
    shift = torch.stack([zero if isinstance(h.affine_map, nn.Identity) else h.affine_map.bias.to(like.dtype)
                         for h in heads])
    return scale.unsqueeze(1), shift.unsqueeze(1)
