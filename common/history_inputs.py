"""History inputs in their three forms: jagged (a batch's lists, rows' items one after another), padded [B, L] (one
row per candidate row, or per request on the request path) and packed (the padded inputs' real items again, for the
CPU path); and the requests: which rows share one history (`request_groups`) and where each candidate sits among its
request's (`request_slots`)."""

from __future__ import annotations

import torch

__all__ = ["pad_jagged", "packed_history", "padded_history", "request_groups", "request_slots", "tracing"]


def _padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def _slots(lengths: torch.Tensor, num_items: int, max_length: int) -> torch.Tensor:
    """The flat [B * max_length] slot of each of the rows' items (the rows' items one after another): computed from
    the lengths alone, with no device synchronization."""
    ends = torch.cumsum(lengths, 0)
    item = torch.arange(num_items, device=lengths.device)
    row = torch.searchsorted(ends, item, right=True)
    return row * max_length + item - (ends - lengths)[row]


def _scatter(values: torch.Tensor, slots: torch.Tensor, batch: int, max_length: int) -> torch.Tensor:
    """[B, L, ...] zeros with `values` written at their slots."""
    out = values.new_zeros((batch * max_length, *values.shape[1:]))
    out.index_copy_(0, slots, values)
    return out.view(batch, max_length, *values.shape[1:])


def pad_jagged(values: torch.Tensor, lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """[B, max_length, ...] with row b's first lengths[b] items from `values` (the rows' items one after another),
    zeros after them."""
    lengths = lengths.to(torch.int64)
    return _scatter(values, _slots(lengths, values.shape[0], max_length), lengths.shape[0], max_length)


def packed_history(inputs: dict[str, torch.Tensor], prefix: str
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The padded history inputs' real items one after another (the jagged form again): each "<prefix>id:<col>",
    "actions" [N] and "continuous" [N, C], in row order and most recent first within a row; each item's row [N] and
    position in its row [N] (0 = most recent). An input given packed already, "<prefix>items:<name>" [N, ...] (a
    sharded table's rows in their jagged order), is the item's "<prefix><name>" as it is. On the CPU the items are
    then embedded and encoded once each, with no padding to compute and differentiate; finding them costs a device
    synchronization on a GPU."""
    mask = inputs[prefix + "mask"]
    batch, length = mask.shape
    real = torch.nonzero(mask.reshape(-1)).squeeze(1)
    out = {}
    packed = prefix + "items:"
    for key, tensor in inputs.items():
        if key.startswith(packed):  # given packed already ("<prefix>items:emb:<col>" [N, D]): taken as it is
            if tensor.shape[0] != real.shape[0]:
                raise ValueError(f"{key} holds {tensor.shape[0]} items but {prefix}mask has {real.shape[0]} real "
                                 "items: packed inputs hold the real items in row order")
            out[prefix + key[len(packed):]] = tensor
        elif key.startswith(prefix) and key != prefix + "mask" and not key.startswith(prefix + "candidate:"):
            out[key] = tensor.reshape(batch * length, *tensor.shape[2:]).index_select(0, real)
    return out, torch.div(real, length, rounding_mode="floor"), torch.remainder(real, length)


def padded_history(group: dict[str, torch.Tensor], max_length: int, prefix: str) -> dict[str, torch.Tensor]:
    """A batch's jagged history group as the padded inputs of HistoryEncoder, keys prefixed with `prefix`: "mask"
    [B, L] bool, each "id:<col>" and "actions" [B, L] int64, "continuous" [B, L, C] float32, and each
    "candidate:<col>" [B] as given."""
    lengths = group["lengths"].to(torch.int64)
    out = {prefix + "mask": _padding_mask(lengths, max_length)}
    slots = None
    for key, tensor in group.items():
        if key == "lengths":
            continue
        if key.startswith("candidate:"):
            out[prefix + key] = tensor
            continue
        if slots is None:  # every list of the group has the same lengths
            slots = _slots(lengths, tensor.shape[0], max_length)
        out[prefix + key] = _scatter(tensor, slots, lengths.shape[0], max_length)
    return out


def tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def request_slots(request_of_row: torch.Tensor, num_requests: int) -> tuple[torch.Tensor, int]:
    """(each row's position among its request's rows, in row order [N]; the most rows of any request): where each
    candidate sits in the [R, C] layout of forward_request. Works on rows in any order, and under torch.export (C
    becomes a data-dependent size)."""
    # Not bincount: its output length would be data-dependent under torch.export.
    counts = torch.zeros(num_requests, dtype=torch.int64, device=request_of_row.device).index_add_(
        0, request_of_row, torch.ones_like(request_of_row, dtype=torch.int64))
    order = torch.sort(request_of_row, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    ranked = torch.arange(request_of_row.shape[0], device=request_of_row.device) - starts[request_of_row[order]]
    slot = torch.empty_like(ranked).index_put((order,), ranked)
    width = counts.max().item()
    torch._check(width >= 1)
    torch._check(width <= request_of_row.shape[0])
    return slot, width


def request_groups(inputs: dict[str, torch.Tensor], prefix: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Runs of consecutive rows with identical history inputs: (first row of each run [R], run of each row [B],
    position of each row in its run [B]); None when no two neighbouring rows share a history."""
    mask = inputs[prefix + "mask"]
    batch = mask.shape[0]
    if batch < 2:
        return None
    same = torch.ones(batch - 1, dtype=torch.bool, device=mask.device)
    for key, tensor in inputs.items():
        # A sharded table's rows follow from the ids, which are compared.
        if key.startswith(prefix) and not key.startswith((prefix + "candidate:", prefix + "emb:")):
            flat = tensor.reshape(batch, -1)
            same &= (flat[1:] == flat[:-1]).all(dim=1)
    if not bool(same.any()):
        return None
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=mask.device), ~same])
    request = torch.cumsum(starts.to(torch.int64), 0) - 1
    first = torch.nonzero(starts).reshape(-1)
    slot = torch.arange(batch, device=mask.device) - first[request]
    return first, request, slot
