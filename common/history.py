"""Engagement history as model input: one HistoryEncoder per group turns the padded history inputs and the
candidate into the group's part of the model input.

The pieces: history_inputs.py (the jagged, padded and packed forms, the requests), history_tokens.py (the item and
candidate tokens, e_j and c, and the items' weights g_j), history_match.py (exact candidate <-> history id matches,
counted from the raw ids) and sequence_encoders.py (pooling, target attention, the candidate-isolated transformer).
The group's output is

    [encoder output, mean of the item tokens (mean_pooling), c, match features]

(optionally through a Linear down to output_dim), which joins the model input.

Ids are hashed (or taken modulo) into each table like the large embedding tables' ids. A column's table E_i is
either a replicated nn.Embedding owned by the tokens (small vocabularies) or a sharded torchrec table looked up
before the dense model (MultiTaskRankingModel): its rows then come in as inputs, "<group>/emb:<col>" [B, L, dim]
and "<group>/candidate:emb:<col>" [B, dim], and the tokens are the same. Where the encoder packs the real items
(`HistoryEncoder.packs`: CPU, eager) the rows may come packed instead, "<group>/items:emb:<col>" [N, dim] with the
real items in row order (the jagged order): MultiTaskRankingModel gives them so in training, sparing a pad and a
gather and their gradients.

Inputs of `HistoryEncoder.forward` are padded [B, L] tensors keyed "<group>/<field>"; `padded_history` makes them
from a batch's jagged group (lengths [B] and the rows' items one after another). On the request path the history
tensors hold one row per request ([R, L]), the candidate ids one per candidate row ([N]), and `request_of_row` [N]
says which request each candidate row belongs to: each history is encoded once, every candidate scored against its
own request's, with the same result as row by row. The row features (`features`, the featurized continuous and
binary inputs the candidate token may project) are one row per candidate row on both paths.
"""

from __future__ import annotations

import torch
from torch import nn

from common.history_inputs import (
    packed_history,
    pad_jagged,
    padded_history,
    request_groups,
    request_slots,
    tracing,
)
from common.history_match import match_features, match_width, packed_match_features
from common.history_tokens import HistoryTokens, ItemWeights
from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention, row_sum

__all__ = ["HistoryEncoder", "HistoryTokens", "ItemWeights", "pad_jagged", "packed_history", "padded_history",
           "request_groups", "request_slots"]


class HistoryEncoder(nn.Module):
    """One history group: tokens, then pooling / target attention / the isolated transformer (module docstring)."""

    def __init__(self, name: str, tokens: HistoryTokens, encoder: nn.Module, max_length: int,
                 share_requests: bool = True, candidate_columns: list[str] | None = None,
                 output_dim: int | None = None, item_weights: ItemWeights | None = None,
                 ordinal_actions: bool = False, mean_pooling: bool = False, user_token: bool = False) -> None:
        """max_length: the history length the inputs are padded to. share_requests: in eager evaluation,
        consecutive rows with the same history (the candidates of one request, as they sit together in the files)
        encode it once and score their candidates in one pass; exact, since no candidate reads another (an exported
        program is given its requests instead: forward's request_of_row). candidate_columns: the id columns whose
        candidate id is matched exactly against the history's ids (match features). item_weights: each item's
        weight in pooling and target attention (history_tokens.ItemWeights). ordinal_actions: the action ids are
        ordered (ratings): the match features add mean actions. mean_pooling: the masked mean of the item tokens
        joins the output. user_token: a learned token u that the transformer's history and candidates attend to."""
        super().__init__()
        if not isinstance(encoder, (HistoryPooling, TargetAttention, CandidateIsolatedTransformer)):
            raise TypeError(f"unknown history encoder {type(encoder).__name__}")
        transformer = isinstance(encoder, CandidateIsolatedTransformer)
        if item_weights is not None and item_weights.active and transformer:
            raise ValueError(f"history group {name!r}: item weights (action weights, time decay) apply to pooling "
                             "and target attention, not to the transformer")
        if user_token and not transformer:
            raise ValueError(f"history group {name!r}: a user token needs the transformer encoder")
        self.prefix = name + "/"
        self.max_length = max_length
        self.tokens = tokens
        self.encoder = encoder
        self.pooling = isinstance(encoder, HistoryPooling)
        self.share_requests = share_requests
        self.item_weights = item_weights if item_weights is not None and item_weights.active else None
        self.ordinal_actions = ordinal_actions
        self.mean_pooling = mean_pooling
        self.user = nn.Parameter(torch.randn(tokens.dim) * tokens.dim ** -0.5) if user_token else None
        # Exact id matches between the candidate and the history, per id column with a candidate id.
        self.match_columns = [c for c in tokens.columns if c in (candidate_columns or [])]
        self.match_width = match_width(len(self.match_columns), tokens.num_actions, ordinal_actions,
                                       self.item_weights is not None)
        width = (2 + mean_pooling) * tokens.dim + self.match_width
        # Optionally a Linear down to output_dim: a wide output would widen every layer reading the model input.
        self.projection = nn.Linear(width, output_dim) if output_dim is not None else None
        self.output_dim = output_dim if output_dim is not None else width

    def forward(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """[N, output_dim] for N candidate rows.

        Without `request_of_row` every input has one row per candidate: the history tensors [N, L, ...] and the
        candidate ids [N]. With it (the request path) the history tensors hold R requests' histories ([R, L, ...]),
        the candidate ids stay [N] and request_of_row [N] int64 gives each row's request in [0, R): each history is
        encoded once and every candidate is scored against its own request's, exactly as if it carried the history
        itself (no candidate reads another). Row by row is the case R = N, request_of_row = arange(N).
        features: [N, F] the rows' featurized inputs, read by the candidate token's projection (when it has one).
        """
        self.check_inputs(inputs, request_of_row)
        out = self._encode(inputs, request_of_row, features)
        return self.projection(out) if self.projection is not None else out

    def _weights(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The items' weights g ([B, L] padded, [N] packed), or None."""
        if self.item_weights is None:
            return None
        return self.item_weights(inputs.get(self.prefix + "actions"), inputs.get(self.prefix + "continuous"))

    def _mean(self, history: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """[the masked mean of the padded item tokens] with mean_pooling, else []."""
        if not self.mean_pooling:
            return []
        m = mask.to(history.dtype)
        return [torch.einsum("bl,bld->bd", m, history) / m.sum(dim=1, keepdim=True).clamp(min=1.0)]

    def _encode(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        # Only outside training: training rows are shuffled, so neighbours rarely share a history, and the check
        # would cost a device synchronization per step.
        if (request_of_row is None and self.share_requests and not self.pooling and not self.training
                and not tracing()):
            groups = request_groups(inputs, self.prefix)
            if groups is not None:
                first, request_of_row, _ = groups
                inputs = {k: v if k.startswith(self.prefix + "candidate:") else v.index_select(0, first)
                          for k, v in inputs.items() if k.startswith(self.prefix)}
        if request_of_row is not None:
            return self._encode_requests(inputs, request_of_row, features)
        mask = inputs[self.prefix + "mask"]
        candidate = self.tokens.candidate(inputs, self.prefix, mask, features)
        packs = self.packs(mask)
        if not packs and any(k.startswith(self.prefix + "items:") for k in inputs):
            raise ValueError(f"history group {self.prefix[:-1]!r} takes its inputs padded here (its encoder, device "
                             "or mode does not pack them): pass '<group>/emb:<col>' [rows, L, dim], not 'items:emb:'")
        if packs:
            items, row, position = packed_history(inputs, self.prefix)
            weight = self._weights(items)
            matches = packed_match_features(inputs, items, row, position, self.prefix, self.match_columns,
                                            self.tokens.num_actions, self.ordinal_actions, weight)
            history = self.tokens.items(items, self.prefix)
            batch = mask.shape[0]
            if self.pooling:
                encoded = self.encoder.forward_packed(history, row, batch, weight)
            else:
                encoded = self.encoder.forward_packed(history, row, candidate, weight)
            mean = []
            if self.mean_pooling:
                count = torch.bincount(row, minlength=batch).to(history.dtype).clamp(min=1.0)
                mean = [row_sum(history, row, batch) / count.unsqueeze(1)]
            return torch.cat([encoded, *mean, candidate, *matches], dim=1)
        history = self.tokens.items(inputs, self.prefix)
        weight = self._weights(inputs)
        if self.pooling:
            encoded = self.encoder(history, mask, weight)
        elif isinstance(self.encoder, TargetAttention):
            encoded = self.encoder(history, mask, candidate, weight)
        else:
            encoded = self.encoder(history, mask, candidate, self._user(mask.shape[0]))
        matches = match_features(inputs, self.prefix, self.match_columns, self.tokens.num_actions,
                                 self.ordinal_actions, weight)
        return torch.cat([encoded, *self._mean(history, mask), candidate, *matches], dim=1)

    def _user(self, rows: int) -> torch.Tensor | None:
        return self.user.unsqueeze(0).expand(rows, -1) if self.user is not None else None

    def _encode_requests(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor,
                         features: torch.Tensor | None) -> torch.Tensor:
        """The request path: the R histories' tokens (and item weights) computed once each ([R, L, D]), then per
        encoder
          pooling:          pooled once per request, then given to each of its rows;
          target attention: each row weighs its request's tokens against its candidate (the weights are
                            per (candidate, item) pair by definition: the tokens are shared, gathered per row);
          transformer:      the history layers run once per request, every candidate of a request in one
                            pass ([R, C, D], C the most rows of any request; forward_request);
        and the match features from the rows' own view of their request's raw ids."""
        request_of_row = request_of_row.to(torch.int64)
        mask = inputs[self.prefix + "mask"]
        candidate = self.tokens.candidate(inputs, self.prefix, request_of_row, features)
        history = self.tokens.items(inputs, self.prefix)
        weight = self._weights(inputs)
        row_weight = weight.index_select(0, request_of_row) if weight is not None else None
        if self.pooling:
            encoded = self.encoder(history, mask, weight).index_select(0, request_of_row)
        elif isinstance(self.encoder, TargetAttention):
            encoded = self.encoder(history.index_select(0, request_of_row), mask.index_select(0, request_of_row),
                                   candidate, row_weight)
        else:
            num_requests = mask.shape[0]
            slot, width = request_slots(request_of_row, num_requests)
            where = (request_of_row, slot)
            candidates = candidate.new_zeros(num_requests, width, candidate.shape[1]).index_put(where, candidate)
            present = torch.zeros(num_requests, width, dtype=torch.bool, device=mask.device).index_put(
                where, torch.ones_like(request_of_row, dtype=torch.bool))
            encoded = self.encoder.forward_request(history, mask, candidates, present,
                                                   self._user(num_requests))[where]
        mean = [m.index_select(0, request_of_row) for m in self._mean(history, mask)]
        matches = match_features(self._row_view(inputs, request_of_row), self.prefix, self.match_columns,
                                 self.tokens.num_actions, self.ordinal_actions, row_weight)
        return torch.cat([encoded, *mean, candidate, *matches], dim=1)

    def _row_view(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the match features read, one row per candidate: the mask, matched id columns and actions of each
        row's request (small integer gathers), and the candidate ids as given."""
        keys = [self.prefix + "mask", self.prefix + "actions", *(self.prefix + "id:" + c for c in self.match_columns)]
        rows = {k: inputs[k].index_select(0, request_of_row) for k in keys if k in inputs}
        rows.update({k: v for k, v in inputs.items() if k.startswith(self.prefix + "candidate:")})
        return rows

    def packs(self, mask: torch.Tensor) -> bool:
        """Whether the row path encodes the real items packed: on the CPU, in eager mode, with an encoder that has a
        packed form (`forward_packed`: pooling and target attention), the same values as the padded form without
        computing anything for the padding. On a GPU, and in an exported or scripted model, the padded form avoids
        a device synchronization and data-dependent shapes."""
        return hasattr(self.encoder, "forward_packed") and mask.device.type == "cpu" and not tracing()

    def check_inputs(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None = None) -> None:
        """Raise an error naming the input for what this group cannot read: a missing tensor; ids, actions or
        request_of_row that are not integers (a float id would be truncated into another id); history tensors whose
        rows or length disagree with the mask, candidate ids not one per row; an action id outside
        [0, num_actions) (it would read another action's embedding, or the candidate's own); a request_of_row
        entry outside [0, R).

        Values are checked exactly, with the offending value in the message, in eager mode; in an exported program
        (and in training on an accelerator, where a synchronization per step would cost) an asynchronous assert
        stops the call with a message naming the input and the allowed range."""
        p = self.prefix
        required = [p + "mask", *(p + "id:" + c for c in self.tokens.columns)]
        required += [p + "actions"] if self.tokens.actions is not None else []
        required += [p + "continuous"] if self.tokens.num_continuous else []
        required += [p + "candidate:" + c for c in self.match_columns]
        missing = [k for k in required if k not in inputs]
        if missing:
            raise KeyError(f"history group {p[:-1]!r}: inputs {missing} are missing (it reads {required})")
        integers = [k for k in inputs if (k.startswith((p + "id:", p + "candidate:")) or k == p + "actions")
                    and not k.startswith(p + "candidate:emb:")]  # a sharded table's rows, looked up already
        for key in integers:
            _check_integer(inputs[key], key)
        if request_of_row is not None:
            _check_integer(request_of_row, "request_of_row")
        if not tracing():
            self._check_shapes(inputs, request_of_row)
        asynchronous = tracing() or (self.training and inputs[p + "mask"].device.type != "cpu")
        if self.tokens.num_actions is not None:
            _check_range(inputs[p + "actions"], self.tokens.num_actions, p + "actions",
                         f"model.sequences.{p[:-1]}.num_actions is {self.tokens.num_actions}", asynchronous)
        if request_of_row is not None:
            # Symbolic in an exported program: named rather than printed there.
            _check_range(request_of_row, inputs[p + "mask"].shape[0], "request_of_row",
                         f"one request per row of the history tensors of group {p[:-1]!r}", asynchronous,
                         "requests")

    def _check_shapes(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None) -> None:
        p = self.prefix
        mask = inputs[p + "mask"]
        if mask.dim() != 2:
            raise ValueError(f"{p}mask has shape {tuple(mask.shape)}; expected [rows or requests, max_length]")
        for key, tensor in inputs.items():
            if not key.startswith(p) or key.startswith(p + "candidate:") or key == p + "mask":
                continue
            if key.startswith(p + "items:"):  # packed (the real items in row order): packed_history checks them
                if tensor.dim() != 2:
                    raise ValueError(f"{key} has shape {tuple(tensor.shape)}; expected [items, dim]")
                continue
            dims = 3 if key == p + "continuous" or key.startswith(p + "emb:") else 2
            if tensor.dim() != dims or tuple(tensor.shape[:2]) != tuple(mask.shape):
                raise ValueError(f"{key} has shape {tuple(tensor.shape)} but {p}mask has {tuple(mask.shape)}: the "
                                 f"tensors of history group {p[:-1]!r} hold the same rows and items")
        rows = mask.shape[0] if request_of_row is None else request_of_row.shape[0]
        if request_of_row is not None and request_of_row.dim() != 1:
            raise ValueError(f"request_of_row has shape {tuple(request_of_row.shape)}; expected [rows]")
        for key, tensor in inputs.items():
            if key.startswith(p + "candidate:emb:"):  # a sharded table's row per candidate: [rows, dim]
                if tensor.dim() != 2 or tensor.shape[0] != rows:
                    raise ValueError(f"{key} has shape {tuple(tensor.shape)}; expected one row per candidate ({rows})")
                continue
            if key.startswith(p + "candidate:") and tuple(tensor.shape) != (rows,):
                what = "request_of_row's rows" if request_of_row is not None else f"{p}mask's rows"
                raise ValueError(f"{key} has shape {tuple(tensor.shape)}; expected one id per candidate row "
                                 f"({rows}, {what})")


def _check_integer(tensor: torch.Tensor, key: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{key} holds {tensor.dtype} values; it takes integer ids (int64)")


def _check_range(values: torch.Tensor, size: int, key: str, why: str, asynchronous: bool,
                 size_name: str | None = None) -> None:
    """Every entry of `values` (padding included) in [0, size), else an error naming `key` (and, when checked
    synchronously, the first offending value and how many there are). size_name: what the asynchronous message
    calls a size that is not a number then."""
    if asynchronous:
        inside = ((values >= 0) & (values < size)).all()
        torch._assert_async(inside, f"{key} holds values outside [0, {size_name or size}) ({why})")
        return
    bad = (values < 0) | (values >= size)
    if bool(bad.any()):
        raise ValueError(f"{key} holds {int(bad.sum())} values outside [0, {size}) (first: {values[bad][0].item()}; "
                         f"{why})")
