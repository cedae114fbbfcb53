"""Multi-task expert mixtures: MMoE (Ma et al. 2018) and PLE (Tang et al. 2020, a stack of CGC levels).

Experts are any modules reporting `output_dim` (Mlp, Dcn, MaskNet; a tensor or {"output": tensor} out), built by a
factory from their input width, so a mixture knows nothing of configs. Each returns one tensor per task (in task
order) and the gate weights [B, K] by gate name (`gate_names`, for logging expert use: a gate whose weights collapse
onto one expert shows it).

MMoE:  h_t = sum_k g_{t,k} E_k(x),   g_t = softmax(W_t x + b_t)
PLE level l (x^1_t = x^1_s = x):
  task t:  h^l_t = sum over [T^l_{t,1..m}(x^l_t), S^l_{1..s}(x^l_s)] weighted by softmax(W^l_t x^l_t)
  shared (every level but the last):  h^l_s = sum over all experts of the level weighted by softmax(W^l_s x^l_s)
  x^{l+1}_t = h^l_t,  x^{l+1}_s = h^l_s;  the last level's h_t feed the towers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ExpertFactory = Callable[[int], nn.Module]


def _mix(experts: Sequence[torch.Tensor], gate_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k softmax(logits)_k * experts[k], the gate weights [B, K])."""
    weights = torch.softmax(gate_logits, dim=-1)
    stacked = torch.stack(list(experts), dim=1)  # [B, K, D]
    return torch.einsum("bk,bkd->bd", weights.to(stacked.dtype), stacked), weights


def expert_output(expert: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An expert's output: the tensor, or the "output" of the blocks that return {"output": ...}."""
    out = expert(x)
    return out["output"] if isinstance(out, dict) else out


def _build_experts(factory: ExpertFactory, count: int, in_features: int) -> nn.ModuleList:
    experts = nn.ModuleList(factory(in_features) for _ in range(count))
    widths = {int(e.output_dim) for e in experts}
    if len(widths) != 1:
        raise ValueError(f"all experts of a mixture must have the same output width, got {sorted(widths)}")
    return experts


class MMoE(nn.Module):
    """Multi-gate mixture of experts: `num_experts` experts on the input, one softmax gate per task."""

    def __init__(self, in_features: int, num_tasks: int, num_experts: int, make_expert: ExpertFactory) -> None:
        super().__init__()
        if num_tasks < 1 or num_experts < 1:
            raise ValueError("MMoE needs at least one task and one expert")
        self.experts = _build_experts(make_expert, num_experts, in_features)
        self.gates = nn.ModuleList(nn.Linear(in_features, num_experts) for _ in range(num_tasks))
        self.output_dim = int(self.experts[0].output_dim)
        # The keys of forward's gate weights, in order (known before any forward, e.g. for tracing).
        self.gate_names = [f"task_{t}" for t in range(num_tasks)]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outputs = [expert_output(expert, x) for expert in self.experts]
        mixed, gates = [], {}
        for t, gate in enumerate(self.gates):
            h, weights = _mix(outputs, gate(x))
            mixed.append(h)
            gates[f"task_{t}"] = weights
        return mixed, gates


class _CgcLevel(nn.Module):
    """One PLE level: per-task and shared experts, a gate per task and (unless last) a shared gate."""

    def __init__(self, in_features: int, num_tasks: int, num_task_experts: int, num_shared_experts: int,
                 make_expert: ExpertFactory, last: bool) -> None:
        super().__init__()
        self.task_experts = nn.ModuleList(
            _build_experts(make_expert, num_task_experts, in_features) if num_task_experts else nn.ModuleList()
            for _ in range(num_tasks)
        )
        self.shared_experts = (_build_experts(make_expert, num_shared_experts, in_features)
                               if num_shared_experts else nn.ModuleList())
        widths = {int(e.output_dim) for group in (*self.task_experts, self.shared_experts) for e in group}
        if len(widths) != 1:
            raise ValueError(f"all experts of a PLE level must have the same output width, got {sorted(widths)}")
        self.output_dim = widths.pop()
        per_task = num_task_experts + num_shared_experts
        self.task_gates = nn.ModuleList(nn.Linear(in_features, per_task) for _ in range(num_tasks))
        all_experts = num_tasks * num_task_experts + num_shared_experts
        self.shared_gate = None if last else nn.Linear(in_features, all_experts)

    def forward(self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor]]:
        shared = [expert_output(expert, shared_input) for expert in self.shared_experts]
        own = [[expert_output(expert, x) for expert in experts] for experts, x in zip(self.task_experts, task_inputs)]
        outputs, gates = [], {}
        for t, (gate, x) in enumerate(zip(self.task_gates, task_inputs)):
            h, weights = _mix(own[t] + shared, gate(x))
            outputs.append(h)
            gates[f"task_{t}"] = weights
        shared_output = None
        if self.shared_gate is not None:
            everything = [o for task in own for o in task] + shared
            shared_output, gates["shared"] = _mix(everything, self.shared_gate(shared_input))
        return outputs, shared_output, gates


class PLE(nn.Module):
    """Progressive layered extraction: `num_levels` CGC levels of task-specific and shared experts."""

    def __init__(self, in_features: int, num_tasks: int, num_levels: int, num_task_experts: int,
                 num_shared_experts: int, make_expert: ExpertFactory) -> None:
        super().__init__()
        if num_tasks < 1 or num_levels < 1 or num_task_experts + num_shared_experts < 1:
            raise ValueError("PLE needs at least one task, one level and one expert per task gate")
        if num_levels > 1 and num_shared_experts < 1:
            raise ValueError("PLE with several levels needs shared experts (the shared path feeds the next level)")
        levels = []
        width = in_features
        for level in range(num_levels):
            cgc = _CgcLevel(width, num_tasks, num_task_experts, num_shared_experts, make_expert,
                            last=level == num_levels - 1)
            levels.append(cgc)
            width = cgc.output_dim
        self.levels = nn.ModuleList(levels)
        self.num_tasks = num_tasks
        self.output_dim = width
        # The keys of forward's gate weights, in order (known before any forward, e.g. for tracing).
        self.gate_names = [
            f"level_{level}/{name}"
            for level in range(num_levels)
            for name in [f"task_{t}" for t in range(num_tasks)] + (["shared"] if level < num_levels - 1 else [])
        ]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        task_inputs, shared_input = [x] * self.num_tasks, x
        gates: dict[str, torch.Tensor] = {}
        for level, cgc in enumerate(self.levels):
            task_inputs, shared_output, level_gates = cgc(task_inputs, shared_input)
            gates.update({f"level_{level}/{name}": w for name, w in level_gates.items()})
            if shared_output is not None:
                shared_input = shared_output
        return task_inputs, gates
