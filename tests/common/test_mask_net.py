"""MaskBlock maths on hand-checked inputs (mask, product, LayerNorm, activation) and MaskNet's layouts."""

import math

import pytest
import torch

from common.mask_net import MaskBlock, MaskBlockSpec, MaskNet
from common.mlp import MlpSpec

EPS = 1e-5


def _block(activation: str, input_layer_norm: bool) -> MaskBlock:
    block = MaskBlock(
        2, 2, output_size=2, aggregation_size=1, input_layer_norm=input_layer_norm, activation=activation
    )
    w1, _, w2 = block.mask
    with torch.no_grad():
        w1.weight.copy_(torch.tensor([[1.0, 1.0]]))
        w1.bias.copy_(torch.tensor([2.0]))
        w2.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        w2.bias.copy_(torch.tensor([0.0, 0.5]))
        block.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        block.hidden.bias.zero_()
        block.output_layer_norm.weight.copy_(torch.tensor([2.0, 1.0]))
        block.output_layer_norm.bias.copy_(torch.tensor([0.0, -0.5]))
    return block


def test_mask_block_maths():
    hidden = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    mask_input = torch.tensor([[1.0, -2.0], [-3.0, 0.0]])
    # row 0: W1 e + b1 = 1 -> relu 1 -> m = [2, -0.5]; h*m = [6, -0.5]; W(h*m) = [6, -1]
    #        LayerNorm: mean 2.5, var 12.25 -> [1, -1] * 3.5/sqrt(12.25+eps); affine -> [2s, -s - 0.5]
    s0 = 3.5 / math.sqrt(12.25 + EPS)
    # row 1: W1 e + b1 = -1 -> relu 0 -> m = b2 = [0, 0.5]; h*m = [0, 0.5]; W(h*m) = [0, 1]
    #        LayerNorm: mean 0.5, var 0.25 -> [-1, 1] * 0.5/sqrt(0.25+eps); affine -> [-2s, s - 0.5]
    s1 = 0.5 / math.sqrt(0.25 + EPS)
    before_activation = torch.tensor([[2 * s0, -s0 - 0.5], [-2 * s1, s1 - 0.5]])
    torch.testing.assert_close(_block("none", False)(hidden, mask_input), before_activation)
    torch.testing.assert_close(_block("relu", False)(hidden, mask_input), before_activation.clamp_min(0))


def test_mask_block_input_layer_norm_applies_to_hidden_only():
    hidden = torch.tensor([[3.0, 1.0]])
    mask_input = torch.tensor([[1.0, -2.0]])
    # LayerNorm([3, 1]) = [t, -t] with t = 1/sqrt(1+eps); m = [2, -0.5] (from the raw mask input)
    # h*m = [2t, 0.5t]; W(h*m) = [2t, t]; LayerNorm: mean 1.5t, var 0.25t^2 -> [1, -1] * 0.5t/sqrt(0.25t^2+eps)
    t = 1 / math.sqrt(1 + EPS)
    s = 0.5 * t / math.sqrt(0.25 * t * t + EPS)
    expected = torch.tensor([[2 * s, -s - 0.5]])
    torch.testing.assert_close(_block("none", True)(hidden, mask_input), expected)


def test_mask_hidden_size_from_reduction_factor_or_aggregation_size():
    assert MaskBlockSpec(output_size=4, reduction_factor=0.5).mask_hidden_size(10) == 5
    assert MaskBlockSpec(output_size=4, reduction_factor=0.33).mask_hidden_size(10) == 3
    assert MaskBlockSpec(output_size=4, aggregation_size=7).mask_hidden_size(10) == 7
    with pytest.raises(ValueError, match="exactly one"):
        MaskBlockSpec(output_size=4, reduction_factor=0.5, aggregation_size=7).mask_hidden_size(10)
    with pytest.raises(ValueError, match="exactly one"):
        MaskBlockSpec(output_size=4).mask_hidden_size(10)


def test_parallel_concatenates_blocks_reading_the_input():
    blocks = [MaskBlockSpec(5, reduction_factor=1.0), MaskBlockSpec(3, aggregation_size=2, activation="none")]
    net = MaskNet(6, blocks, parallel=True)
    x = torch.randn(4, 6)
    out = net(x)["output"]
    assert net.output_dim == 8 and out.shape == (4, 8)
    torch.testing.assert_close(out, torch.cat([net.blocks[0](x, x), net.blocks[1](x, x)], dim=1))
    assert net.blocks[0].mask[0].out_features == 6 and net.blocks[1].mask[0].out_features == 2


def test_serial_chains_blocks_with_the_input_as_mask():
    blocks = [MaskBlockSpec(5, reduction_factor=0.5), MaskBlockSpec(3, reduction_factor=0.5)]
    net = MaskNet(6, blocks, parallel=False, mlp=MlpSpec((4, 2)))
    x = torch.randn(4, 6)
    first, second = net.blocks
    # Block 2 reads block 1's 5 outputs as hidden input and the 6 original inputs as mask input.
    assert (
        second.hidden.in_features == 5
        and second.mask[0].in_features == 6
        and second.mask[0].out_features == 3
    )
    expected = net.mlp(second(first(x, x), x))["output"]
    torch.testing.assert_close(net(x)["output"], expected)
    assert net.output_dim == 2
    assert MaskNet(6, blocks, parallel=False).output_dim == 3
