"""Engagement history as model input: jagged lists padded once per batch, item tokens, and one encoder per group.

An item's token is its id embeddings (one table per id column), its action-type embedding and a Linear projection
of its continuous values (sign(x)·log1p|x|, so an age in hours or a count enters on a log scale), side by side:

    e_j = [E_1[id_1(j)], ..., E_n[id_n(j)], A[action_j], W · slog(x_j) + b]
    c   = [E_1[cand_1], ..., E_n[cand_n], A[num_actions], b]     (the candidate: its ids in the same tables, the
                                                                  dedicated "candidate" action, no continuous values)

Beside the encoder, exact id matches between the candidate and the history (how often and how recently the user
engaged with this author or topic, and by which action) are counted from the raw ids (`match_features`).

Side by side rather than summed, a candidate whose author is a history item's author shows it as a block where
e_j - c is zero and e_j * c is large, which the target-attention MLP reads directly.

Ids are hashed (or taken modulo) into each table like the large embedding tables' ids. A column's table E_i is
either a replicated nn.Embedding owned here (small vocabularies) or a sharded torchrec table looked up before the
dense model (MultiTaskRankingModel): its rows then come in as inputs, "<group>/emb:<col>" [B, L, dim] and
"<group>/candidate:emb:<col>" [B, dim], and the tokens are the same. The encoder (pooling,
target attention or the candidate-isolated transformer, common/sequence_encoders.py) turns the padded tokens and
the candidate token into one vector; the group's output is [encoder output, c, match features], which joins the
model input.

Inputs of `HistoryEncoder.forward` are padded [B, L] tensors keyed "<group>/<field>"; `padded_history` makes them
from a batch's jagged group (lengths [B] and the rows' items one after another). On the request path the history
tensors hold one row per request ([R, L]), the candidate ids one per candidate row ([N]), and `request_of_row` [N]
says which request each candidate row belongs to: each history is encoded once, every candidate scored against its
own request's, with the same result as row by row.
"""

from __future__ import annotations

import torch
from torch import nn

from common.init import EmbeddingInit, init_embedding_
from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention, row_sum
from common.sparse_embeddings import hash_ids

__all__ = ["HistoryEncoder", "HistoryTokens", "pad_jagged", "packed_history", "padded_history", "request_groups",
           "request_slots"]


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
    position in its row [N] (0 = most recent). On the CPU the items are then embedded and encoded once each, with
    no padding to compute and differentiate; finding them costs a device synchronization on a GPU."""
    mask = inputs[prefix + "mask"]
    batch, length = mask.shape
    real = torch.nonzero(mask.reshape(-1)).squeeze(1)
    out = {}
    for key, tensor in inputs.items():
        if key.startswith(prefix) and key != prefix + "mask" and not key.startswith(prefix + "candidate:"):
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


class HistoryTokens(nn.Module):
    """Item and candidate tokens of one history group (see the module docstring): blocks of `dim` values side by
    side, one per id column, then the action block and the continuous block when the group has them."""

    def __init__(self, dim: int, tables: dict[str, tuple[int, bool] | None], num_actions: int | None = None,
                 num_continuous: int = 0, init: EmbeddingInit | None = None) -> None:
        """tables: {id column: (num_embeddings, hashed) of a replicated table owned here, or None for a column whose
        rows come in as inputs (a sharded table)}; num_actions: action types (None: the group has none); init: the
        id and action tables' initial weights (None: normal with std dim ** -0.5 for ids, nn.Embedding's N(0, 1)
        for actions)."""
        super().__init__()
        if not tables:
            raise ValueError("a history group needs at least one id column")
        self.columns = list(tables)
        owned = {c: t for c, t in tables.items() if t is not None}
        # Module names cannot hold dots: replicated tables are stored by position, in `columns` order.
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n, _ in owned.values())
        self.table_index = {c: i for i, c in enumerate(owned)}
        self.sizes = [n for n, _ in owned.values()]
        self.hashed = [h for _, h in owned.values()]
        for column, table in zip(owned, self.tables):
            init_embedding_(table.weight, init or ("normal", dim ** -0.5), column)
        self.num_actions = num_actions
        # The last index is the candidate's "action".
        self.actions = nn.Embedding(num_actions + 1, dim) if num_actions is not None else None
        if self.actions is not None:
            init_embedding_(self.actions.weight, init, "actions")
        self.continuous = nn.Linear(num_continuous, dim) if num_continuous else None
        self.block = dim
        self.dim = dim * (len(self.columns) + (self.actions is not None) + (self.continuous is not None))

    def _lookup(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64)
        if self.hashed[index]:
            ids = hash_ids(ids)
        return self.tables[index](torch.remainder(ids, self.sizes[index]))

    def _rows(self, inputs: dict[str, torch.Tensor], prefix: str, column: str) -> torch.Tensor:
        """[B, L, dim] rows of one id column: looked up here, or given (a sharded table's rows)."""
        index = self.table_index.get(column)
        if index is None:
            return inputs[prefix + "emb:" + column].float()
        return self._lookup(index, inputs[prefix + "id:" + column])

    def items(self, inputs: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        """[B, L, dim] tokens of the padded history."""
        blocks = [self._rows(inputs, prefix, column) for column in self.columns]
        if self.actions is not None:
            # In [0, num_actions) (HistoryEncoder checks it): index num_actions is the candidate's own action.
            blocks.append(self.actions(inputs[prefix + "actions"].to(torch.int64)))
        if self.continuous is not None:
            x = inputs[prefix + "continuous"].float()
            x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
            blocks.append(self.continuous(torch.sign(x) * torch.log1p(x.abs())))
        return torch.cat(blocks, dim=-1)

    def candidate(self, inputs: dict[str, torch.Tensor], prefix: str, like: torch.Tensor) -> torch.Tensor:
        """[B, dim] candidate tokens: its ids' embeddings (zeros for an id column without a candidate column), the
        "candidate" action and the continuous block of zero values."""
        batch = like.shape[0]
        blocks = []
        for column in self.columns:
            index = self.table_index.get(column)
            key = prefix + "candidate:" + (column if index is not None else "emb:" + column)
            if key not in inputs:
                blocks.append(like.new_zeros((batch, self.block), dtype=torch.float32))
            elif index is None:
                blocks.append(inputs[key].float())
            else:
                blocks.append(self._lookup(index, inputs[key]))
        if self.actions is not None:
            index = torch.full((batch,), self.num_actions, dtype=torch.int64, device=like.device)
            blocks.append(self.actions(index))
        if self.continuous is not None:
            blocks.append(self.continuous.bias.expand(batch, -1))
        return torch.cat(blocks, dim=-1)


class HistoryEncoder(nn.Module):
    """One history group: tokens, then pooling / target attention / the isolated transformer; output [B, 2 dim]."""

    def __init__(self, name: str, tokens: HistoryTokens, encoder: nn.Module, max_length: int,
                 share_requests: bool = True, candidate_columns: list[str] | None = None,
                 output_dim: int | None = None) -> None:
        """max_length: the history length the inputs are padded to. share_requests: in eager evaluation,
        consecutive rows with the same history (the candidates of one request, as they sit together in the files)
        encode it once and score their candidates in one pass; exact, since no candidate reads another (an exported
        program is given its requests instead: forward's request_of_row). candidate_columns: the id columns whose
        candidate id is matched exactly against the history's ids (match features)."""
        super().__init__()
        if not isinstance(encoder, (HistoryPooling, TargetAttention, CandidateIsolatedTransformer)):
            raise TypeError(f"unknown history encoder {type(encoder).__name__}")
        self.prefix = name + "/"
        self.max_length = max_length
        self.tokens = tokens
        self.encoder = encoder
        self.pooling = isinstance(encoder, HistoryPooling)
        self.share_requests = share_requests
        # Exact id matches between the candidate and the history, per id column with a candidate id.
        self.match_columns = [c for c in tokens.columns if c in (candidate_columns or [])]
        self.match_width = 2 + (tokens.num_actions or 0)
        width = 2 * tokens.dim + self.match_width * len(self.match_columns)
        # Optionally a Linear down to output_dim: a wide output would widen every layer reading the model input.
        self.projection = nn.Linear(width, output_dim) if output_dim is not None else None
        self.output_dim = output_dim if output_dim is not None else width

    def forward(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None = None) -> torch.Tensor:
        """[N, output_dim] for N candidate rows.

        Without `request_of_row` every input has one row per candidate: the history tensors [N, L, ...] and the
        candidate ids [N]. With it (the request path) the history tensors hold R requests' histories ([R, L, ...]),
        the candidate ids stay [N] and request_of_row [N] int64 gives each row's request in [0, R): each history is
        encoded once and every candidate is scored against its own request's, exactly as if it carried the history
        itself (no candidate reads another). Row by row is the case R = N, request_of_row = arange(N).
        """
        self.check_inputs(inputs, request_of_row)
        out = self._encode(inputs, request_of_row)
        return self.projection(out) if self.projection is not None else out

    def _encode(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor | None = None) -> torch.Tensor:
        # Only outside training: training rows are shuffled, so neighbours rarely share a history, and the check
        # would cost a device synchronization per step.
        if (request_of_row is None and self.share_requests and not self.pooling and not self.training
                and not _tracing()):
            groups = request_groups(inputs, self.prefix)
            if groups is not None:
                first, request_of_row, _ = groups
                inputs = {k: v if k.startswith(self.prefix + "candidate:") else v.index_select(0, first)
                          for k, v in inputs.items() if k.startswith(self.prefix)}
        if request_of_row is not None:
            return self._encode_requests(inputs, request_of_row)
        mask = inputs[self.prefix + "mask"]
        candidate = self.tokens.candidate(inputs, self.prefix, mask)
        if self.packs(mask):
            items, row, position = packed_history(inputs, self.prefix)
            matches = self.packed_match_features(inputs, items, row, position)
            history = self.tokens.items(items, self.prefix)
            if self.pooling:
                encoded = self.encoder.forward_packed(history, row, mask.shape[0])
            else:
                encoded = self.encoder.forward_packed(history, row, candidate)
            return torch.cat([encoded, candidate, *matches], dim=1)
        history = self.tokens.items(inputs, self.prefix)
        if self.pooling:
            encoded = self.encoder(history, mask)
        else:
            encoded = self.encoder(history, mask, candidate)
        return torch.cat([encoded, candidate, *self.match_features(inputs)], dim=1)

    def _encode_requests(self, inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor) -> torch.Tensor:
        """The request path: the R histories' tokens computed once each ([R, L, D]), then per encoder
          pooling:          pooled once per request, then given to each of its rows;
          target attention: each row weighs its request's tokens against its candidate (the weights are
                            per (candidate, item) pair by definition: the tokens are shared, gathered per row);
          transformer:      the history layers run once per request, every candidate of a request in one
                            pass ([R, C, D], C the most rows of any request; forward_request);
        and the match features from the rows' own view of their request's raw ids."""
        request_of_row = request_of_row.to(torch.int64)
        mask = inputs[self.prefix + "mask"]
        candidate = self.tokens.candidate(inputs, self.prefix, request_of_row)
        history = self.tokens.items(inputs, self.prefix)
        if self.pooling:
            encoded = self.encoder(history, mask).index_select(0, request_of_row)
        elif isinstance(self.encoder, TargetAttention):
            encoded = self.encoder(history.index_select(0, request_of_row), mask.index_select(0, request_of_row),
                                   candidate)
        else:
            num_requests = mask.shape[0]
            slot, width = request_slots(request_of_row, num_requests)
            where = (request_of_row, slot)
            candidates = candidate.new_zeros(num_requests, width, candidate.shape[1]).index_put(where, candidate)
            present = torch.zeros(num_requests, width, dtype=torch.bool, device=mask.device).index_put(
                where, torch.ones_like(request_of_row, dtype=torch.bool))
            encoded = self.encoder.forward_request(history, mask, candidates, present)[where]
        return torch.cat([encoded, candidate, *self.match_features(self._row_view(inputs, request_of_row))], dim=1)

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
        return hasattr(self.encoder, "forward_packed") and mask.device.type == "cpu" and not _tracing()

    def match_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per id column with a candidate: how often and how recently the user engaged with the candidate's id,
        from exact raw-id matches m_j = [id_j = candidate id] over the real items: log1p(Σ_j m_j),
        Σ_j m_j / (j + 1) (item j is the j-th most recent), and log1p(Σ_j m_j [action_j = a]) per action type a.
        Inputs one row per candidate."""
        if not self.match_columns:
            return []
        mask = inputs[self.prefix + "mask"]
        recency = 1.0 / torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32)
        actions = inputs.get(self.prefix + "actions")
        out = []
        for column in self.match_columns:
            ids = inputs[self.prefix + "id:" + column]
            match = ((ids == inputs[self.prefix + "candidate:" + column][:, None]) & mask).float()
            parts = [torch.log1p(match.sum(dim=1, keepdim=True)), (match * recency).sum(dim=1, keepdim=True)]
            if actions is not None and self.tokens.num_actions is not None:
                kinds = torch.arange(self.tokens.num_actions, device=mask.device)
                per_action = (match[:, :, None] * (actions[:, :, None] == kinds).float()).sum(dim=1)
                parts.append(torch.log1p(per_action))
            out.append(torch.cat(parts, dim=1))
        return out

    def packed_match_features(self, inputs: dict[str, torch.Tensor], items: dict[str, torch.Tensor], row: torch.Tensor,
                              position: torch.Tensor) -> list[torch.Tensor]:
        """match_features() from the packed real items (packed_history: their rows and positions): the same values,
        with no [B, L] (or [B, L, num_actions]) intermediate."""
        if not self.match_columns:
            return []
        batch = inputs[self.prefix + "mask"].shape[0]
        recency = 1.0 / (position + 1).to(torch.float32)
        actions = items.get(self.prefix + "actions")
        out = []
        for column in self.match_columns:
            candidate = inputs[self.prefix + "candidate:" + column].index_select(0, row)
            match = (items[self.prefix + "id:" + column] == candidate).to(torch.float32)
            parts = [torch.log1p(row_sum(match, row, batch)).unsqueeze(1), row_sum(match * recency, row, batch)[:, None]]
            if actions is not None and self.tokens.num_actions is not None:
                kinds = self.tokens.num_actions
                action = actions.to(torch.int64)
                known = (action >= 0) & (action < kinds)  # as in match_features, an unknown action counts nowhere
                per_action = row_sum(match * known, row * kinds + action.clamp(0, kinds - 1), batch * kinds)
                parts.append(torch.log1p(per_action.view(batch, kinds)))
            out.append(torch.cat(parts, dim=1))
        return out

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
        required += [p + "continuous"] if self.tokens.continuous is not None else []
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
        if not _tracing():
            self._check_shapes(inputs, request_of_row)
        asynchronous = _tracing() or (self.training and inputs[p + "mask"].device.type != "cpu")
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


def _tracing() -> bool:
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
