"""The speed paths compute what the plain modules compute: oneDNN linear (forward, gradients, fused ReLU, FLOP
count), the fused Mlp, the shared input standardization of a parallel MaskNet, the DCN cross layer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import linear as linear_module
from common.dcn import CrossLayer
from common.linear import linear
from common.mask_net import MaskBlockSpec, MaskNet
from common.mlp import Mlp

needs_onednn = pytest.mark.skipif(not linear_module._ONEDNN, reason="this PyTorch build has no oneDNN linear")


def _inputs(rows=6, k=5, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, requires_grad=True)
    w = torch.randn(n, k, generator=g, requires_grad=True)
    b = torch.randn(n, generator=g, requires_grad=True)
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_functional_linear_and_its_gradients(relu, with_bias):
    x, w, b = _inputs()
    bias = b if with_bias else None
    out = linear(x, w, bias, relu=relu)
    assert out.grad_fn is not None and "OneDnn" in type(out.grad_fn).__name__  # the fast path really ran
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, w, b] if with_bias else [x, w], grad)
    ref = F.linear(x, w, bias)
    ref = F.relu(ref) if relu else ref
    want = torch.autograd.grad(ref, [x, w, b] if with_bias else [x, w], grad)
    torch.testing.assert_close(out, ref)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)


def test_linear_hand_checked_with_relu():
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    w = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
    b = torch.tensor([0.0, -4.0, 1.0])
    # rows: [1-2, 0.5+4-4, 2+1] = [-1, 0.5, 3]; [-1-0.5, -0.5+1-4, 0.5+1] = [-1.5, -3.5, 1.5]
    torch.testing.assert_close(linear(x, w, b, relu=True), torch.tensor([[0.0, 0.5, 3.0], [0.0, 0.0, 1.5]]))


def test_linear_keeps_leading_dimensions_and_plain_paths():
    x, w, b = _inputs(rows=6)
    x3 = x.detach().reshape(2, 3, 5)
    torch.testing.assert_close(linear(x3, w, b), F.linear(x3, w, b))
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b, relu=True), F.relu(F.linear(x, w, b)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(x, w, b)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, F.linear(x, w, b))


@needs_onednn
def test_flop_counter_counts_the_onednn_products():
    x, w, b = _inputs(rows=6, k=5, n=4)
    with FlopCounterMode(display=False) as counter:
        linear(x, w, b).sum().backward()
    # forward, grad input and grad weight: three 6x5x4 products, 2 FLOPs per multiply-add
    assert counter.get_total_flops() == 3 * 2 * 6 * 5 * 4


def test_fused_mlp_equals_its_layers_in_sequence():
    torch.manual_seed(0)
    mlp = Mlp(7, [6, 5, 3], dropout=None, final_layer_activation=True)
    x = torch.randn(9, 7, requires_grad=True)
    out = mlp(x)["output"]
    ref = mlp.layers(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), [x, *mlp.parameters()])
    ref_grads = torch.autograd.grad(ref.sum(), [x, *mlp.parameters()])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def _unshared_parallel(net: MaskNet, x: torch.Tensor) -> torch.Tensor:
    out = torch.cat([block(x, x) for block in net.blocks], dim=1)
    return net.mlp(out)["output"] if net.mlp is not None else out


def test_parallel_mask_net_shares_one_standardization_and_matches_its_blocks():
    torch.manual_seed(0)
    specs = [MaskBlockSpec(output_size=4, aggregation_size=3), MaskBlockSpec(output_size=2, reduction_factor=0.5)]
    net = MaskNet(6, specs, parallel=True)
    assert net.share_input_standardization
    for block in net.blocks:  # distinct affine maps per block, so sharing must keep them apart
        with torch.no_grad():
            block.input_layer_norm.weight.uniform_(0.5, 2.0)
            block.input_layer_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(5, 6, requires_grad=True)
    out = net(x)["output"]
    ref = _unshared_parallel(net, x)
    torch.testing.assert_close(out, ref)
    params = [x, *net.parameters()]
    for got, want in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(got, want)
    # Under bf16 autocast the shared standardization runs in bf16 (float32 statistics); values and gradients stay
    # within bf16 rounding of the blocks' own float32 LayerNorms.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = net(x)["output"].float(), _unshared_parallel(net, x).float()
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)
    for got, want in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_mask_net_without_input_norms_does_not_share():
    specs = [MaskBlockSpec(output_size=2, aggregation_size=2, input_layer_norm=False)] * 2
    assert not MaskNet(3, specs, parallel=True).share_input_standardization
    assert not MaskNet(3, [MaskBlockSpec(output_size=2, aggregation_size=2)] * 2, parallel=False) \
        .share_input_standardization


@pytest.mark.parametrize("projection_dim", [None, 2])
def test_cross_layer_is_x0_times_projection_plus_x(projection_dim):
    torch.manual_seed(0)
    layer = CrossLayer(4, projection_dim)
    x0, x = torch.randn(3, 4), torch.randn(3, 4)
    projected = layer.weight(x)
    torch.testing.assert_close(layer(x0, x), x0 * projected + x)


def test_scripted_modules_take_the_plain_path():
    torch.manual_seed(0)
    net = MaskNet(6, [MaskBlockSpec(output_size=3, aggregation_size=2)] * 2, parallel=True,
                  mlp=None).eval()
    mlp = Mlp(6, [4, 2]).eval()
    x = torch.randn(3, 6)
    for module in (net, mlp):
        torch.testing.assert_close(torch.jit.script(module)(x)["output"], module(x)["output"])
    assert isinstance(mlp.layers[0], nn.Linear)
