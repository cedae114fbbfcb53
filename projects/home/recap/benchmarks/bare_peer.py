"""The bare peer: what a hand-written PyTorch loop doing the same dense maths reaches on this machine.

A plain model of the config's shape, written the way a user would write it in forty lines (nn.Linear, LayerNorm,
ReLU): the parallel MaskNet of the backbone (each block LN(x) * (W2 ReLU(W1 x + b1) + b2), then Linear, LayerNorm,
ReLU; the blocks' outputs concatenated), the backbone's MLP, one MLP tower per task and a logit, binary
cross-entropy averaged over the tasks, a fused Adam step. It reads one in-memory float tensor as wide as our dense
model's input (no featurization, no embedding lookups, no clipping, no metrics, no loader), so it is the ceiling of
the dense work, not a competitor with a feature pipeline.

`recap benchmark` times it and our training step in turns in one run (benchmarks.timing.interleaved_timing) and
reports the ratio of FLOP rates, each counted by torch's flop counter on its own step: ours / peer >= 1.0 means our
whole step (lookups, featurization, loss weights, clipping, both optimizers) runs the model's FLOPs at least as fast
as the bare loop runs its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core import perf
from projects.home.recap.benchmarks.timing import gflops_per_second, interleaved_timing, rates, timing_json
from projects.home.recap.schema import RecapConfig


def _mlp(width: int, sizes: list[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers), width


class _MaskBlock(nn.Module):
    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.norm, self.w1, self.w2 = nn.LayerNorm(width), nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.out, self.out_norm = nn.Linear(width, out), nn.LayerNorm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.out_norm(self.out(self.norm(x) * self.w2(F.relu(self.w1(x))))))


class BarePeer(nn.Module):
    """The plain model (see the module docstring); logits [B, tasks]."""

    def __init__(self, width: int, blocks: list[tuple[int, int]], backbone_mlp: list[int], towers: list[list[int]]):
        super().__init__()
        self.blocks = nn.ModuleList(_MaskBlock(width, hidden, out) for hidden, out in blocks)
        width = sum(out for _, out in blocks) if blocks else width
        self.mlp, width = _mlp(width, backbone_mlp)
        self.towers = nn.ModuleList()
        for sizes in towers:
            tower, tower_width = _mlp(width, sizes)
            self.towers.append(nn.Sequential(tower, nn.Linear(tower_width, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.blocks):
            x = torch.cat([block(x) for block in self.blocks], dim=1)
        x = self.mlp(x)
        return torch.cat([tower(x) for tower in self.towers], dim=1)


def peer_shape(config: RecapConfig, input_width: int) -> dict[str, Any] | None:
    """The peer's shape for a config whose dense model is a share_all backbone (a parallel MaskNet with an optional
    MLP, or an MLP) under MLP towers; None for other architectures (no bare peer is measured for them)."""
    model = config.model
    if model.multi_task_type != "share_all" or model.backbone is None:
        return None
    if any(t.mlp_config is None for t in model.tasks.values()):
        return None
    backbone = model.backbone
    if backbone.mask_net_config is not None:
        net = backbone.mask_net_config
        if not net.use_parallel:
            return None
        blocks = [(b.aggregation_size or int(input_width * (b.reduction_factor or 1.0)), b.output_size)
                  for b in net.mask_blocks]
        mlp = net.mlp.layer_sizes if net.mlp is not None else []
    elif backbone.mlp_config is not None:
        blocks, mlp = [], backbone.mlp_config.layer_sizes
    else:
        return None
    return {"input_width": input_width, "blocks": blocks, "backbone_mlp": list(mlp),
            "towers": [list(t.mlp_config.layer_sizes) for t in model.tasks.values() if t.mlp_config is not None]}


def peer_step(shape: dict[str, Any], batch_size: int, precision: str, seed: int = 0
              ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one training step of the peer on an in-memory batch, one forward+backward for counting its FLOPs)."""
    torch.manual_seed(seed)
    model = BarePeer(shape["input_width"], shape["blocks"], shape["backbone_mlp"], shape["towers"]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, shape["input_width"], generator=g)
    labels = (torch.rand(batch_size, len(shape["towers"]), generator=g) < 0.1).float()

    def forward_backward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), labels)
        loss.backward()

    def step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def counted() -> None:
        forward_backward()
        optimizer.zero_grad(set_to_none=True)

    return step, counted


def against_peer(ours: Callable[[], object], our_flops_per_call: float, examples_per_call: int,
                 shape: dict[str, Any], batch_size: int, precision: str, seconds: float, calls: dict[str, int],
                 peak_gflops: float, min_rounds: int = 3) -> dict[str, Any]:
    """Our step and the peer's, timed in turns (windows of calls["ours"] and calls["peer"] calls, at least
    min_rounds each): each one's rows/s, GFLOP/s and MFU, and ours / peer in GFLOP/s."""
    step, count = peer_step(shape, batch_size, precision)
    peer_flops = perf.count_flops(count)
    timings = interleaved_timing({"ours": ours, "peer": step}, seconds, calls=calls, warmup=1, min_rounds=min_rounds)
    out: dict[str, Any] = {"shape": shape}
    for name, flops, rows in (("ours", our_flops_per_call, examples_per_call), ("peer", peer_flops, batch_size)):
        t = timings[name]
        gflops = gflops_per_second(flops, t.best)
        out[name] = {**rates(rows, t), "gflops_per_second": gflops, "mfu": gflops / peak_gflops,
                     "flops_per_example": flops / rows, "step": timing_json(t)}
    out["ratio"] = out["ours"]["gflops_per_second"] / out["peer"]["gflops_per_second"]
    return out
