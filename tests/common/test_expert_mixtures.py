"""MMoE and PLE: exact mixtures on hand-set gates, the degenerate cases that equal simpler models, gradients to
every expert and gate, and an exported program that scores like the module."""

import pytest
import torch
from torch import nn

from common.expert_mixtures import PLE, MMoE, expert_output
from common.mlp import Mlp


def mlp_expert(width: int = 6):
    return lambda in_features: Mlp(in_features, [8, width])


class Fixed(nn.Module):
    """An expert whose output is a fixed linear map of its input (for hand-checked mixtures)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())
        self.output_dim = matrix.shape[1]

    def forward(self, x):
        return x @ self.matrix


def test_mmoe_gates_sum_to_one_and_mix_the_experts_exactly():
    torch.manual_seed(0)
    matrices = iter([torch.eye(2), 2 * torch.eye(2)])
    mmoe = MMoE(2, num_tasks=2, num_experts=2, make_expert=lambda n: Fixed(next(matrices)))
    with torch.no_grad():
        for gate, bias in zip(mmoe.gates, ([0.0, 0.0], [0.0, torch.log(torch.tensor(3.0))])):
            gate.weight.zero_()
            gate.bias.copy_(torch.tensor(bias))
    x = torch.tensor([[1.0, -2.0]])
    (h0, h1), gates = mmoe(x)
    assert list(gates) == mmoe.gate_names == ["task_0", "task_1"]
    # Task 0: weights 1/2, 1/2 -> 1.5 x; task 1: weights 1/4, 3/4 -> (1/4 + 3/2) x = 1.75 x.
    torch.testing.assert_close(h0, 1.5 * x)
    torch.testing.assert_close(h1, 1.75 * x)
    torch.testing.assert_close(gates["task_1"], torch.tensor([[0.25, 0.75]]))
    x = torch.randn(5, 2)
    _, gates = mmoe(x)
    for weights in gates.values():
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))


def test_a_one_expert_mmoe_is_its_expert_for_every_task():
    torch.manual_seed(0)
    mmoe = MMoE(4, num_tasks=3, num_experts=1, make_expert=mlp_expert())
    x = torch.randn(7, 4)
    outputs, _ = mmoe(x)
    expected = expert_output(mmoe.experts[0], x)
    for h in outputs:
        torch.testing.assert_close(h, expected)


def test_one_level_ple_without_task_experts_equals_mmoe_on_the_same_experts():
    torch.manual_seed(0)
    ple = PLE(4, num_tasks=2, num_levels=1, num_task_experts=0, num_shared_experts=3, make_expert=mlp_expert())
    mmoe = MMoE(4, num_tasks=2, num_experts=3, make_expert=mlp_expert())
    level = ple.levels[0]
    mmoe.experts.load_state_dict(level.shared_experts.state_dict())
    mmoe.gates.load_state_dict(level.task_gates.state_dict())
    x = torch.randn(9, 4)
    (p0, p1), ple_gates = ple(x)
    (m0, m1), mmoe_gates = mmoe(x)
    torch.testing.assert_close(p0, m0)
    torch.testing.assert_close(p1, m1)
    torch.testing.assert_close(ple_gates["level_0/task_1"], mmoe_gates["task_1"])


def test_ple_levels_feed_task_and_shared_paths_as_written():
    torch.manual_seed(0)
    ple = PLE(3, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=1, make_expert=mlp_expert(3))
    x = torch.randn(4, 3)
    outputs, gates = ple(x)
    assert list(gates) == ple.gate_names == ["level_0/task_0", "level_0/task_1", "level_0/shared", "level_1/task_0",
                                              "level_1/task_1"]
    first, second = ple.levels
    # Level 1 by hand: task t mixes [its expert, the shared expert]; the shared gate mixes all three.
    t_out = [expert_output(first.task_experts[t][0], x) for t in range(2)]
    s_out = expert_output(first.shared_experts[0], x)
    h = [torch.softmax(first.task_gates[t](x), -1) for t in range(2)]
    level1 = [h[t][:, :1] * t_out[t] + h[t][:, 1:] * s_out for t in range(2)]
    g = torch.softmax(first.shared_gate(x), -1)
    shared1 = g[:, :1] * t_out[0] + g[:, 1:2] * t_out[1] + g[:, 2:] * s_out
    # Level 2 reads them; its shared expert reads the shared path.
    s2 = expert_output(second.shared_experts[0], shared1)
    for t in range(2):
        w = torch.softmax(second.task_gates[t](level1[t]), -1)
        expected = w[:, :1] * expert_output(second.task_experts[t][0], level1[t]) + w[:, 1:] * s2
        torch.testing.assert_close(outputs[t], expected)
    for weights in gates.values():
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


@pytest.mark.parametrize("mixture", ["mmoe", "ple"])
def test_every_expert_and_gate_receives_a_gradient(mixture):
    torch.manual_seed(0)
    if mixture == "mmoe":
        module = MMoE(4, num_tasks=2, num_experts=3, make_expert=mlp_expert())
    else:
        module = PLE(4, num_tasks=2, num_levels=2, num_task_experts=2, num_shared_experts=1, make_expert=mlp_expert())
    outputs, _ = module(torch.randn(6, 4))
    sum(h.pow(2).sum() for h in outputs).backward()
    silent = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_experts_of_different_widths_are_refused():
    widths = iter([4, 5])
    with pytest.raises(ValueError, match=r"same output width, got \[4, 5\]"):
        MMoE(3, num_tasks=1, num_experts=2, make_expert=lambda n: Mlp(n, [next(widths)]))


def test_an_exported_mixture_scores_like_the_module():
    torch.manual_seed(0)
    module = PLE(4, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=2,
                 make_expert=mlp_expert()).eval()
    x = torch.randn(3, 4)
    program = torch.export.export(module, (x,))
    got, got_gates = program.module()(x)
    want, want_gates = module(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got_gates["level_1/task_0"], want_gates["level_1/task_0"])
