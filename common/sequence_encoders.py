"""Engagement-history encoders: masked pooling, DIN target attention, a transformer with candidate isolation.

Inputs are already-embedded tokens: the history `history: [B, L, D]` with `history_mask: [B, L]` (bool or 0/1,
True = real item), the candidate `candidate: [B, D]`, and on the request path `candidates: [R, C, D]` with
`candidate_mask: [R, C]`. Index 0 of the history is the MOST RECENT item and padding sits at the end (the oldest
side), so appending padding never moves a real item; positions count from the most recent item (item j has
position j) and every candidate has position `max_length`, the one just after the longest history.

pooling:           out = sum_j m_j g_j e_j                               (sum)
                   out = sum_j m_j g_j e_j / max(1, sum_j m_j)           (mean)
target attention:  a_j = MLP([e_j, c, e_j - c, e_j * c])   (a scalar; Zhou et al. 2018, DIN)
                   w_j = m_j a_j,  or  w = softmax over real j of a_j    (softmax=True; padding is -inf)
                   out = sum_j g_j w_j e_j
   g_j is an optional per-item weight (`item_weight`, e.g. from the item's action type and age; 1 without it).
isolated transformer over [u?, e_1..e_L, c_1..c_C], per layer (pre-norm):
                   x <- x + Attn(LN(x)),  x <- x + FFN(LN(x)),  and LN once more at the end,
   with the allowed (query -> key) pairs
                   e_i -> e_j   iff m_j (and, when causal, j >= i: an item sees itself and older items only)
                   c_k -> e_j   iff m_j;      c_k -> c_k;      never c_k -> c_l (k != l);  never e_i -> c_k.
   With a user token u (`user`, one per request), u is one more history token, placed after the oldest item: all
   pairs with the real items (causal: every item reads u, as the oldest token, and u reads itself only); the
   candidates read it like an item.
   Since no history token reads a candidate, the history is encoded once per request and each candidate reads
   the per-layer history keys and values plus its own: a candidate's output depends on the history and on itself
   only, never on which other candidates share its request or their order.

Pooling and target attention also take the history packed (`forward_packed`): the real items only, one after
another, `items: [N, D]` with `row: [N]` (the row of each item). The sums over j become sums over a row's items and
the softmax a softmax within each row (`segment_softmax`): the same values as the padded form, without computing
or differentiating anything for the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.activation import activation_module
from common.mlp import glorot_init

POOLING_MODES = ("sum", "mean")
POSITION_MODES = ("learned", "rotary", "none")


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def row_sum(values: torch.Tensor, row: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[num_rows, ...]: the sum of each row's packed values (`row[n]` the row of values[n]); 0 for a row with none."""
    return values.new_zeros((num_rows, *values.shape[1:])).index_add_(0, row, values)


def segment_softmax(logits: torch.Tensor, row: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Softmax of packed logits [N] within each row (`row[n]` the row of logits[n]): the masked softmax of the padded
    form on its real items. The row's maximum is subtracted first, as a constant (softmax does not depend on it)."""
    peak = logits.new_full((num_rows,), float("-inf"))
    peak = peak.scatter_reduce(0, row, logits.detach(), "amax", include_self=True)
    e = torch.exp(logits - peak.index_select(0, row))
    return e / row_sum(e, row, num_rows).index_select(0, row)


class HistoryPooling(nn.Module):
    """Masked sum or mean of the history tokens: [B, L, D], [B, L] -> [B, D]; a row with no real item gives 0."""

    def __init__(self, mode: str = "sum", dim: int | None = None) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown history pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
        self.mode = mode
        self.output_dim = dim

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor,
                item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, D], [B, L], optional item weights g [B, L] -> [B, D]."""
        m = _as_bool(history_mask).to(history.dtype)
        weight = m if item_weight is None else m * item_weight.to(history.dtype)
        out = torch.einsum("bl,bld->bd", weight, history)
        if self.mode == "mean":
            out = out / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return out

    def forward_packed(self, items: torch.Tensor, row: torch.Tensor, num_rows: int,
                       item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """forward() on the packed real items (see the module docstring): [N, D], [N], [N] -> [num_rows, D]."""
        out = row_sum(items if item_weight is None else item_weight.unsqueeze(1) * items, row, num_rows)
        if self.mode == "mean":
            count = torch.bincount(row, minlength=num_rows).to(out.dtype)
            out = out / count.clamp(min=1.0).unsqueeze(1)
        return out


class TargetAttention(nn.Module):
    """DIN target attention: a candidate-dependent weighted sum of the history tokens, [B, L, D] -> [B, D].

    The scoring MLP (`self.mlp`) reads [e_j, c, e_j - c, e_j * c] (4 D values) through `hidden_dims` with
    `activation` after each hidden Linear, and ends in a Linear to one logit a_j. Without softmax (DIN's default,
    which keeps the intensity of interest) w_j = m_j a_j; with softmax w is a softmax over the real items (padding
    gets -inf; a row without real items gets all-zero weights, never NaN).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (64, 32), activation: str = "relu",
                 softmax: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * dim
        for size in hidden_dims:
            layers += [nn.Linear(width, size), activation_module(activation)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                glorot_init(layer)
        self.softmax = softmax
        self.output_dim = dim

    def weights(self, history: torch.Tensor, history_mask: torch.Tensor, candidate: torch.Tensor,
                item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights g_j w_j [B, L] (or [R, C, L] for candidates [R, C, D]; item_weight [B, L] or
        [R, L]); 0 on padding."""
        if item_weight is not None:
            gate = item_weight.unsqueeze(1) if candidate.dim() == 3 else item_weight
            return self.weights(history, history_mask, candidate) * gate.to(history.dtype)
        mask = _as_bool(history_mask)
        if candidate.dim() == 3:  # [R, C, D]: every candidate scores the same history
            e = history.unsqueeze(1).expand(-1, candidate.shape[1], -1, -1)  # [R, C, L, D]
            mask = mask.unsqueeze(1)  # [R, 1, L]
        else:
            e = history  # [B, L, D]
        c = candidate.unsqueeze(-2)
        # The first Linear on [e, c, e - c, e * c] without building it: with W = [W_e, W_c, W_d, W_p] (each [h, D]),
        # W [e, c, e - c, e c] = (W_e + W_d) e + (W_c - W_d) c + W_p (e c); the candidate's part once per candidate.
        first = self.mlp[0]
        w_e, w_c, w_d, w_p = first.weight.split(e.shape[-1], dim=1)
        own = F.linear(c, w_c - w_d, first.bias)
        # Packing the real items pays on CPU; on a GPU (and under export) the padded form avoids a synchronization.
        if e.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_scripting():
            hidden = F.linear(torch.cat([e, e * c], dim=-1), torch.cat([w_e + w_d, w_p], dim=1)) + own
            logits = self.mlp[1:](hidden).squeeze(-1)
        else:
            # The MLP on the real items only (padding's weight is 0 or masked out either way).
            full = mask.expand(e.shape[:-1])
            items = e[full]
            pair = c.expand(e.shape)[full]
            hidden = F.linear(torch.cat([items, items * pair], dim=-1), torch.cat([w_e + w_d, w_p], dim=1))
            hidden = hidden + own.expand(*e.shape[:-1], own.shape[-1])[full]
            logits = e.new_zeros(full.shape)
            logits[full] = self.mlp[1:](hidden).squeeze(-1).to(logits.dtype)
        if not self.softmax:
            return logits * mask.to(logits.dtype)
        # The most negative finite value instead of -inf: exp(min - max) is exactly 0 wherever a real item
        # exists, and a row with none gives a uniform softmax that the mask then zeroes (no NaN, no NaN grads).
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * mask.to(logits.dtype)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, candidate: torch.Tensor,
                item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """out = sum_j g_j w_j e_j: [B, L, D], [B, L], [B, D], optional [B, L] -> [B, D]."""
        return torch.einsum("bl,bld->bd", self.weights(history, history_mask, candidate, item_weight), history)

    def packed_weights(self, items: torch.Tensor, row: torch.Tensor, candidate: torch.Tensor,
                       item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights g_j w_j [N] of packed real items [N, D] (`row` [N] their rows) for candidates
        [B, D]; item_weight [N] or None."""
        if item_weight is not None:
            return self.packed_weights(items, row, candidate) * item_weight.to(items.dtype)
        first = self.mlp[0]
        w_e, w_c, w_d, w_p = first.weight.split(items.shape[-1], dim=1)
        # As in weights(): (W_e + W_d) e + W_p (e c) per item, (W_c - W_d) c + b once per row.
        own = F.linear(candidate, w_c - w_d, first.bias)
        pair = candidate.index_select(0, row)
        # Two products, not one on [e, e c]: building the [N, 2D] concatenation (and splitting its gradient) moves
        # more memory than the second product costs.
        hidden = F.linear(items, w_e + w_d) + F.linear(items * pair, w_p) + own.index_select(0, row)
        logits = self.mlp[1:](hidden).squeeze(-1)
        return segment_softmax(logits, row, candidate.shape[0]) if self.softmax else logits

    def forward_packed(self, items: torch.Tensor, row: torch.Tensor, candidate: torch.Tensor,
                       item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """forward() on the packed real items (see the module docstring): [N, D], [N], [B, D], [N] -> [B, D]."""
        weights = self.packed_weights(items, row, candidate, item_weight)
        return row_sum(weights.unsqueeze(1) * items, row, candidate.shape[0])

    def forward_request(self, history: torch.Tensor, history_mask: torch.Tensor, candidates: torch.Tensor,
                        candidate_mask: torch.Tensor | None = None,
                        item_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Every candidate of a request against its one history: [R, L, D], [R, L], [R, C, D], [R, C], [R, L]
        -> [R, C, D] (padding candidates give 0)."""
        out = torch.einsum("rcl,rld->rcd", self.weights(history, history_mask, candidates, item_weight), history)
        if candidate_mask is not None:
            out = out * _as_bool(candidate_mask).unsqueeze(-1).to(out.dtype)
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021), half-split pairing: (x_i, x_{i+h/2}) turns by angle p * theta_i,
    theta_i = 10000^(-2i/h); x [..., T, h], cos/sin [T, h/2] (or [h/2] for one shared position)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class _IsolatedLayer(nn.Module):
    """One pre-norm layer; the history and the candidates are separate streams that share the weights."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_multiplier: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_multiplier * dim)
        self.ffn_out = nn.Linear(ffn_multiplier * dim, dim)
        for layer in (self.qkv, self.out, self.ffn_in, self.ffn_out):
            glorot_init(layer)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LN(x) [R, T, D] -> q, k, v [R, H, T, h]."""
        r, t, _ = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(r, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """x + Out(attention) then x + FFN(LN(x)); attended [R, H, T, h]."""
        r, _, t, _ = attended.shape
        merged = attended.transpose(1, 2).reshape(r, t, self.num_heads * self.head_dim)
        x = x + F.dropout(self.out(merged), self.dropout, self.training)
        ffn = self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return x + F.dropout(ffn, self.dropout, self.training)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor, history_allowed: torch.Tensor,
                key_real: torch.Tensor, rope: tuple[torch.Tensor, ...] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """history [R, L, D], candidates [R, C, D], history_allowed [R, 1, L, L], key_real [R, 1, 1, L];
        rope = (history cos, history sin, candidate cos, candidate sin) or None."""
        qh, kh, vh = self._heads(history)
        qc, kc, vc = self._heads(candidates)
        if rope is not None:
            cos_h, sin_h, cos_c, sin_c = rope
            qh, kh = _rotate(qh, cos_h, sin_h), _rotate(kh, cos_h, sin_h)
            qc, kc = _rotate(qc, cos_c, sin_c), _rotate(kc, cos_c, sin_c)
        p_drop = self.dropout if self.training else 0.0
        attended_h = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=history_allowed, dropout_p=p_drop)
        # Candidate k scores the L history keys and its own key only: L + 1 logits, never the other candidates.
        scale = 1.0 / math.sqrt(self.head_dim)
        to_history = torch.matmul(qc, kh.transpose(-1, -2)) * scale  # [R, H, C, L]
        to_history = to_history.masked_fill(~key_real, float("-inf"))
        to_self = (qc * kc).sum(dim=-1, keepdim=True) * scale  # [R, H, C, 1], always finite: no empty softmax
        p = torch.softmax(torch.cat([to_history, to_self], dim=-1), dim=-1)
        p = F.dropout(p, p_drop, self.training)
        length = kh.shape[2]
        attended_c = torch.matmul(p[..., :length], vh) + p[..., length:] * vc
        return self._finish(history, attended_h), self._finish(candidates, attended_c)


class CandidateIsolatedTransformer(nn.Module):
    """A pre-norm transformer over [history, candidates] in which candidates never see one another.

    positions: "learned" adds `position(p)` (an nn.Embedding(max_length + 1, dim)) to each token before the first
    layer, p = j for history item j (0 = most recent) and p = max_length for every candidate; "rotary" turns each
    head's q and k by the same p in every layer, so a candidate-to-item score depends on max_length - j, the
    item's recency; "none" leaves the attention order-free. `causal`: item i attends to items j >= i only (itself and
    older ones), so its encoding never depends on what was engaged with after it; candidates still see every real
    item. Padding items are never attended to; a row without real items gives each candidate a function of itself
    (finite, no NaN). The FFN is Linear(D, ffn_multiplier D) -> GELU -> Linear(ffn_multiplier D, D); dropout acts
    on the attention probabilities and on both sublayer outputs.
    """

    def __init__(self, dim: int, num_layers: int = 2, num_heads: int = 2, dropout: float = 0.0,
                 positions: str = "learned", max_length: int = 128, causal: bool = False,
                 ffn_multiplier: int = 4) -> None:
        super().__init__()
        if positions not in POSITION_MODES:
            raise ValueError(f"unknown positions {positions!r}; expected one of {', '.join(POSITION_MODES)}")
        if num_layers < 1 or num_heads < 1 or max_length < 1 or ffn_multiplier < 1:
            raise ValueError("CandidateIsolatedTransformer needs num_layers, num_heads, max_length and "
                             "ffn_multiplier of at least 1")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        head_dim = dim // num_heads
        if positions == "rotary" and head_dim % 2:
            raise ValueError(f"rotary positions need an even head width, got dim / num_heads = {head_dim}")
        self.positions = positions
        self.max_length = max_length
        self.causal = causal
        self.position = nn.Embedding(max_length + 1, dim) if positions == "learned" else None
        if positions == "rotary":
            theta = 10000.0 ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) * 2.0 / head_dim)
            angles = torch.arange(max_length + 1, dtype=torch.float64).unsqueeze(1) * theta  # [max_length + 1, h/2]
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.layers = nn.ModuleList(
            _IsolatedLayer(dim, num_heads, dropout, ffn_multiplier) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.output_dim = dim

    def _prepare(self, history: torch.Tensor, history_mask: torch.Tensor, user: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(history with positions, the mask as bool, history_allowed [R, 1, T, T], key_real [R, 1, 1, T]); with a
        user token [R, D] it is the last of the T = L + 1 history tokens, after the oldest item (no position of its
        own)."""
        length = history.shape[1]
        if self.positions != "none" and length > self.max_length:
            raise ValueError(f"history length {length} exceeds max_length {self.max_length}")
        real = _as_bool(history_mask)
        if self.position is not None:
            history = history + self.position.weight[:length]
        if user is not None:
            if user.dim() != 2 or user.shape[0] != history.shape[0] or user.shape[1] != history.shape[2]:
                raise ValueError(f"user token has shape {tuple(user.shape)}; expected [{history.shape[0]}, "
                                 f"{history.shape[2]}] (one per request)")
            history = torch.cat([history, user.to(history.dtype).unsqueeze(1)], dim=1)
            real = torch.cat([real, torch.ones_like(real[:, :1])], dim=1)
            length += 1
        key_real = real[:, None, None, :]
        allowed = key_real.expand(-1, 1, length, -1)
        idx = torch.arange(length, device=history.device)
        if self.causal:
            allowed = allowed & (idx[None, :] >= idx[:, None])  # query i (row) sees key j >= i
        # Each query also sees itself: a padding query would otherwise have no key (NaN); no real query reads it.
        allowed = allowed | (idx[None, :] == idx[:, None])
        return history, real, allowed, key_real

    def _rope(self, length: int, dtype: torch.dtype, user: bool = False) -> tuple[torch.Tensor, ...] | None:
        """Rotations of the history tokens (a user token last, unrotated) and of the candidates."""
        if self.positions != "rotary":
            return None
        cos, sin = self.rope_cos[:length].to(dtype), self.rope_sin[:length].to(dtype)
        if user:
            cos, sin = torch.cat([cos, torch.ones_like(cos[:1])]), torch.cat([sin, torch.zeros_like(sin[:1])])
        return (cos, sin, self.rope_cos[self.max_length].to(dtype), self.rope_sin[self.max_length].to(dtype))

    def encode_history(self, history: torch.Tensor, history_mask: torch.Tensor,
                       user: torch.Tensor | None = None) -> torch.Tensor:
        """The history tokens' final states (no candidate involved): [B, L, D], [B, L] -> [B, L, D]; 0 on padding.
        With a user token [B, D] it takes part and is left out of the output."""
        length = history.shape[1]
        history, real, allowed, key_real = self._prepare(history, history_mask, user)
        no_candidates = history[:, :0]
        rope = self._rope(length, history.dtype, user is not None)
        for layer in self.layers:
            history, _ = layer(history, no_candidates, allowed, key_real, rope)
        out = self.final_norm(history) * real.unsqueeze(-1).to(history.dtype)
        return out[:, :-1] if user is not None else out

    def forward_request(self, history: torch.Tensor, history_mask: torch.Tensor, candidates: torch.Tensor,
                        candidate_mask: torch.Tensor | None = None, user: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Every candidate of a request in one pass, the history encoded once:
        [R, L, D], [R, L], [R, C, D], [R, C], user token [R, D] -> [R, C, D] (padding candidates give 0)."""
        length = history.shape[1]
        history, _, allowed, key_real = self._prepare(history, history_mask, user)
        if self.position is not None:
            candidates = candidates + self.position.weight[self.max_length]
        rope = self._rope(length, history.dtype, user is not None)
        for layer in self.layers:
            history, candidates = layer(history, candidates, allowed, key_real, rope)
        out = self.final_norm(candidates)
        if candidate_mask is not None:
            out = out * _as_bool(candidate_mask).unsqueeze(-1).to(out.dtype)
        return out

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, candidate: torch.Tensor,
                user: torch.Tensor | None = None) -> torch.Tensor:
        """One candidate per row: [B, L, D], [B, L], [B, D], user token [B, D] -> [B, D]."""
        return self.forward_request(history, history_mask, candidate.unsqueeze(1), user=user).squeeze(1)


def attention_flops(batch: int, history_len: int, num_candidates: int, dim: int, num_layers: int,
                    ffn_multiplier: int = 4) -> int:
    """Matmul FLOPs (2 per multiply-add) of one CandidateIsolatedTransformer.forward_request, as it computes them.

    Per request and layer, with T = L + C tokens: projections QKV 6 T D^2 and output 2 T D^2, FFN 4 m T D^2; the
    history self-attention is dense over all L x L pairs (SDPA computes masked pairs too), QK^T 2 L^2 D and AV
    2 L^2 D; each candidate scores only its L + 1 allowed keys, QK^T 2 C (L + 1) D and AV 2 C (L + 1) D (not the
    (L + C)^2 pairs a dense joint attention would compute). Layer norms, softmax and positions are not counted;
    a training step is about 3x this. forward() is this with num_candidates = 1.
    """
    tokens = history_len + num_candidates
    projections = (8 + 4 * ffn_multiplier) * tokens * dim * dim
    history_attention = 4 * history_len * history_len * dim
    candidate_attention = 4 * num_candidates * (history_len + 1) * dim
    return batch * num_layers * (projections + history_attention + candidate_attention)
