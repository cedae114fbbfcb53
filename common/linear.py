"""y = x W^T + b (optionally ReLU-ed), with float32 CPU training routed through oneDNN.

Why: PyTorch sends float32 CPU matmuls to MKL, whose sgemm takes a slower code path on some CPUs (on AMD EPYC it
reaches about half of what the same cores do through oneDNN's AVX-512 kernels). `linear` runs the forward and both
backward products of a float32 CPU layer through oneDNN's linear primitive, fusing the ReLU into the forward
product. Everywhere else (bf16 autocast, which already uses oneDNN; GPUs; torch.export, scripting and tracing) it is
exactly torch.nn.functional.linear (+ relu). The results agree with F.linear up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """The oneDNN product with its gradients (the relu mask is read from the saved output)."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool):
        y = _onednn(x, weight, bias, relu)
        ctx.relu = relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad = grad.contiguous()
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        # dx = g W and dW = g^T x, both as oneDNN linear products on transposed views (no copies).
        grad_x = _onednn(grad, weight.t(), None, False) if need_x else None
        grad_w = _onednn(grad.t(), x.t(), None, False) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not _ONEDNN or torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    # Proxies and tensor subclasses (fx tracing, fake tensors) take the plain path.
    if type(x) is not torch.Tensor or type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return False
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        # A one-output layer (a task's final logit) is a matrix-vector product: aten is faster there.
        and weight.shape[0] > 1
        and not torch.is_autocast_enabled("cpu")
    )


@torch.jit.ignore
def _linear_eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if not _use_onednn(x, weight):
        y = F.linear(x, weight, bias)
        return F.relu(y) if relu else y
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    x2 = x2.contiguous()
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        y = _OneDnnLinear.apply(x2, weight, bias, relu)
    else:
        y = _onednn(x2, weight, bias, relu)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """x W^T + b, then ReLU if `relu`; float32 CPU work goes through oneDNN (see the module docstring)."""
    if torch.jit.is_scripting():
        y = F.linear(x, weight, bias)
        return F.relu(y) if relu else y
    return _linear_eager(x, weight, bias, relu)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    rows = 1
    for d in x_shape[:-1]:
        rows *= d
    return 2 * rows * x_shape[-1] * w_shape[0]


if _ONEDNN:
    # FlopCounterMode (and so MFU figures) counts the oneDNN products like the aten matmuls they replace.
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if torch.ops.mkldnn._linear_pointwise not in flop_registry:
        register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_onednn_linear_flops)
