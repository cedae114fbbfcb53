"""The backward pass of fbgemm's dense embedding-bag lookup on CPU.

torchrec computes `data_parallel` tables with fbgemm's dense kernel (`fbgemm::dense_embedding_codegen_lookup_function`).
fbgemm registers that operator's CPU implementation under the plain CPU dispatch key, so autograd never records it:
the pooled output has no gradient path to the table, the table's optimizer never sees a gradient, and the table
stays at its initial values for the whole run (the only sign is torch's "autograd kernel was not registered"
warning). The GPU build registers a real autograd kernel.

`register_dense_lookup_backward()` adds the missing AutogradCPU kernel: the forward is fbgemm's own, the backward is
the exact gradient of an embedding bag (each looked-up row receives its bag's output gradient, scaled by 1/length for
mean pooling and by the per-id weight when there is one), in plain PyTorch. Unpooled lookups (pooling NONE, an
EmbeddingCollection's data-parallel tables) are gathered here in both directions: fbgemm's CPU dense kernel pools
them (one row per bag instead of one per id). It does nothing where fbgemm already has
an autograd kernel, so it is safe to call on every device and more than once.
"""

from __future__ import annotations

import torch

_OP_NAME = "fbgemm::dense_embedding_codegen_lookup_function"
_SUM, _MEAN, _NONE = 0, 1, 2
_library: torch.library.Library | None = None


def _bag_layout(offsets: torch.Tensor, num_features: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(batch size, bag length per bag, bag index of every id); bags are feature-major: bag f*B + b."""
    batch_size = (offsets.numel() - 1) // num_features
    lengths = offsets[1:] - offsets[:-1]
    bag_of_id = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    return batch_size, lengths, bag_of_id


def _unpooled_rows(args: dict) -> torch.Tensor:
    """The flat positions in dev_weights of every id's row, [N, D]: one row per id (pooling NONE, where every
    feature has the same dim)."""
    d_offsets = args["D_offsets"].tolist()
    num_features = len(d_offsets) - 1
    dim = d_offsets[1] - d_offsets[0]
    offsets, indices = args["offsets"].to(torch.int64), args["indices"].to(torch.int64)
    batch_size, _, bag_of_id = _bag_layout(offsets, num_features)
    feature = torch.div(bag_of_id, max(batch_size, 1), rounding_mode="floor")
    start = args["weights_offsets"].to(torch.int64)[feature] + indices * dim
    return start[:, None] + torch.arange(dim, device=indices.device)[None, :]


class _DenseLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dev_weights, indice_weights, args):  # noqa: D102
        ctx.args = args
        ctx.save_for_backward(dev_weights, indice_weights)
        ctx.has_indice_weights = indice_weights is not None
        if args["pooling_mode"] == _NONE:
            # Sequence (unpooled) lookups: fbgemm's CPU dense kernel pools them anyway, so the rows are gathered here.
            if indice_weights is not None:
                raise NotImplementedError("per-id weights have no meaning in an unpooled lookup")
            return dev_weights[_unpooled_rows(args)]
        op = torch.ops.fbgemm.dense_embedding_codegen_lookup_function
        with torch._C._AutoDispatchBelowAutograd():
            out = op(dev_weights=dev_weights, indice_weights=indice_weights, **args)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        dev_weights, indice_weights = ctx.saved_tensors
        a = ctx.args
        if a["pooling_mode"] == _NONE:
            grad_weights = torch.zeros_like(dev_weights)
            grad_weights.index_add_(0, _unpooled_rows(a).reshape(-1), grad_out.to(dev_weights.dtype).reshape(-1))
            return grad_weights, None, None
        d_offsets = a["D_offsets"].tolist()
        num_features = len(d_offsets) - 1
        offsets, indices = a["offsets"].to(torch.int64), a["indices"].to(torch.int64)
        batch_size, lengths, bag_of_id = _bag_layout(offsets, num_features)
        grad_out = grad_out.to(dev_weights.dtype)
        # The factor each id's row enters its bag with: 1, 1/length (mean) and the per-id weight.
        scale = torch.ones(indices.numel(), dtype=dev_weights.dtype, device=indices.device)
        if a["pooling_mode"] == _MEAN:
            scale = scale / lengths.clamp(min=1).to(scale.dtype)[bag_of_id]
        elif a["pooling_mode"] != _SUM:
            raise NotImplementedError("the CPU backward of fbgemm's dense lookup supports sum and mean pooling")
        if indice_weights is not None:
            scale = scale * indice_weights.to(scale.dtype)
        grad_weights = torch.zeros_like(dev_weights)
        grad_indice_weights = torch.zeros_like(indice_weights) if indice_weights is not None else None
        bounds = offsets[:: batch_size].tolist() if batch_size > 0 else [0] * (num_features + 1)
        weights_offsets = a["weights_offsets"].tolist()
        for f in range(num_features):
            start, end = bounds[f], bounds[f + 1]
            if start == end:
                continue
            dim = d_offsets[f + 1] - d_offsets[f]
            rows = indices[start:end]
            sample = bag_of_id[start:end] - f * batch_size
            g = grad_out[sample, d_offsets[f] : d_offsets[f + 1]]
            cols = torch.arange(dim, device=rows.device)
            flat = (weights_offsets[f] + rows[:, None] * dim + cols[None, :]).reshape(-1)
            grad_weights.index_add_(0, flat, (g * scale[start:end, None]).reshape(-1))
            if grad_indice_weights is not None:
                looked_up = dev_weights[flat].view(-1, dim)
                unweighted = scale[start:end] / indice_weights[start:end].to(scale.dtype)
                grad_indice_weights[start:end] = (g * looked_up).sum(1) * unweighted
        return grad_weights, grad_indice_weights, None


def _autograd_kernel(dev_weights, weights_offsets, D_offsets, total_D, max_D, hash_size_cumsum,  # noqa: N803
                     total_hash_size_bits, indices, offsets, pooling_mode, indice_weights=None,
                     feature_requires_grad=None, output_dtype=0, B_offsets=None, **vbe):
    if B_offsets is not None:
        raise NotImplementedError("variable batch sizes per feature are not supported by the CPU dense lookup")
    args = dict(weights_offsets=weights_offsets, D_offsets=D_offsets, total_D=total_D, max_D=max_D,
                hash_size_cumsum=hash_size_cumsum, total_hash_size_bits=total_hash_size_bits, indices=indices,
                offsets=offsets, pooling_mode=pooling_mode, feature_requires_grad=feature_requires_grad,
                output_dtype=output_dtype, **vbe)
    return _DenseLookup.apply(dev_weights, indice_weights, args)


def register_dense_lookup_backward() -> bool:
    """Give fbgemm's CPU dense embedding lookup its missing autograd kernel; True if one was added by this call."""
    global _library
    if _library is not None:
        return False
    import fbgemm_gpu  # noqa: F401  (registers the fbgemm operators)

    if not hasattr(torch.ops.fbgemm, "dense_embedding_codegen_lookup_function"):
        return False
    if torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, "AutogradCPU") or \
            torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, "Autograd"):
        return False
    library = torch.library.Library("fbgemm", "IMPL")
    library.impl("dense_embedding_codegen_lookup_function", _autograd_kernel, "AutogradCPU")
    _library = library
    return True
