"""History encoders: masked pooling and DIN weights on hand-checked inputs; the isolated transformer against a
dense transformer with the SPEC's attention mask written out pair by pair; candidate isolation, padding and
causality invariances; gradients, torch.export and all-padding rows."""

import math

import pytest
import torch
from torch.nn import functional as F

from common.sequence_encoders import (
    CandidateIsolatedTransformer,
    HistoryPooling,
    TargetAttention,
    attention_flops,
    segment_softmax,
)

POSITIONS = ["learned", "rotary", "none"]


def test_masked_sum_and_mean_pooling():
    history = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                            [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]],
                            [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    torch.testing.assert_close(HistoryPooling("sum")(history, mask),
                               torch.tensor([[6.0, 8.0], [9.0, 10.0], [0.0, 0.0]]))
    torch.testing.assert_close(HistoryPooling("mean")(history, mask),
                               torch.tensor([[3.0, 4.0], [9.0, 10.0], [0.0, 0.0]]))
    # A 0/1 float mask means the same.
    torch.testing.assert_close(HistoryPooling("mean")(history, mask.float()), HistoryPooling("mean")(history, mask))
    with pytest.raises(ValueError, match="unknown history pooling mode 'max'"):
        HistoryPooling("max")


def hand_set_din(softmax: bool) -> TargetAttention:
    """dim 1, one hidden layer of 2, weights set so that every attention weight is checkable by hand."""
    din = TargetAttention(1, hidden_dims=[2], activation="relu", softmax=softmax)
    first, _, last = din.mlp
    with torch.no_grad():
        # Features [e, c, e - c, e * c]: h_1 = relu(e), h_2 = relu((e - c) + e c - 1); a = h_1 + 2 h_2 + 0.5.
        first.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, -1.0]))
        last.weight.copy_(torch.tensor([[1.0, 2.0]]))
        last.bias.copy_(torch.tensor([0.5]))
    return din


def test_target_attention_weights_are_the_mlp_on_e_c_difference_and_product():
    din = hand_set_din(softmax=False)
    # c = 2.  e = 1: h = (1, relu(-1 + 2 - 1) = 0) -> 1.5;  e = 2: h = (2, relu(0 + 4 - 1) = 3) -> 8.5;
    # e = -3 is padding (its MLP value, 0.5, must not count).
    history = torch.tensor([[[1.0], [2.0], [-3.0]]])
    mask = torch.tensor([[1, 1, 0]])
    candidate = torch.tensor([[2.0]])
    torch.testing.assert_close(din.weights(history, mask, candidate), torch.tensor([[1.5, 8.5, 0.0]]))
    torch.testing.assert_close(din(history, mask, candidate), torch.tensor([[1.5 * 1.0 + 8.5 * 2.0]]))


def test_target_attention_softmax_sums_to_one_over_real_items_and_an_empty_row_gives_zeros():
    din = hand_set_din(softmax=True)
    history = torch.tensor([[[1.0], [2.0], [-3.0]], [[1.0], [2.0], [-3.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    candidate = torch.tensor([[2.0], [2.0]])
    weights = din.weights(history, mask, candidate)
    z = math.exp(1.5) + math.exp(8.5)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(1.5) / z, math.exp(8.5) / z, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0))
    out = din(history, mask, candidate)
    torch.testing.assert_close(out[1], torch.zeros(1))
    out.sum().backward()
    assert torch.isfinite(history.grad).all()


def test_target_attention_request_path_scores_each_candidate_like_forward():
    torch.manual_seed(0)
    din = TargetAttention(4, hidden_dims=[8, 4], activation="gelu", softmax=True)
    history, mask = torch.randn(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    candidates = torch.randn(2, 3, 4)
    out = din.forward_request(history, mask, candidates, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    for k in range(3):
        want = din(history, mask, candidates[:, k])
        torch.testing.assert_close(out[1, k], want[1])
        if k < 2:
            torch.testing.assert_close(out[0, k], want[0])
    torch.testing.assert_close(out[0, 2], torch.zeros(4))


def _packed(history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real items of a padded history one after another, and the row of each."""
    rows, _ = torch.nonzero(mask, as_tuple=True)
    return history[mask], rows


def test_segment_softmax_is_a_softmax_within_each_row():
    logits = torch.tensor([1.0, 2.0, 3.0, 1000.0, -5.0])
    row = torch.tensor([0, 0, 0, 2, 2])  # row 1 has no items
    out = segment_softmax(logits, row, 3)
    torch.testing.assert_close(out[:3], torch.softmax(logits[:3], 0))
    torch.testing.assert_close(out[3:], torch.tensor([1.0, 0.0]))  # a large logit does not overflow


@pytest.mark.parametrize("encoder", ["sum", "mean", "din", "din_softmax"])
def test_the_packed_forms_equal_the_padded_ones_in_value_and_gradient(encoder):
    torch.manual_seed(0)
    module = {"sum": HistoryPooling("sum"), "mean": HistoryPooling("mean"),
              "din": TargetAttention(6, hidden_dims=[8, 4], activation="gelu"),
              "din_softmax": TargetAttention(6, hidden_dims=[5], softmax=True)}[encoder]
    lengths = torch.tensor([3, 0, 5, 1, 5])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    history = torch.randn(5, 5, 6, requires_grad=True)
    candidate = torch.randn(5, 6, requires_grad=True)
    pooling = isinstance(module, HistoryPooling)
    padded = module(history, mask) if pooling else module(history, mask, candidate)
    items, rows = _packed(history, mask)
    packed = module.forward_packed(items, rows, 5) if pooling else module.forward_packed(items, rows, candidate)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed[1], torch.zeros(6))  # the row without items
    weights = torch.randn(5, 6)
    inputs = [history, candidate, *module.parameters()]
    want = torch.autograd.grad((padded * weights).sum(), inputs, allow_unused=True)
    got = torch.autograd.grad((packed * weights).sum(), inputs, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# --- the isolated transformer ------------------------------------------------------------------------------------


def make_transformer(positions: str = "learned", causal: bool = False, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    settings = dict(dim=8, num_layers=2, num_heads=2, dropout=0.0, positions=positions, max_length=6,
                    causal=causal, ffn_multiplier=2)
    settings.update(kwargs)
    model = CandidateIsolatedTransformer(**settings).eval()
    with torch.no_grad():  # non-trivial layer norms, so a misplaced norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def request_inputs(seed: int = 1, requests: int = 2, length: int = 5, num_candidates: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(requests, length, dim, generator=g)
    mask = torch.zeros(requests, length, dtype=torch.bool)
    for r in range(requests):
        mask[r, : max(1, length - 2 * r)] = True  # padding at the end (the oldest side)
    candidates = torch.randn(requests, num_candidates, dim, generator=g)
    return history, mask, candidates


def dense_reference(model: CandidateIsolatedTransformer, history, mask, candidates):
    """The SPEC's transformer written plainly: one dense attention over [e_1..e_L, c_1..c_C] per layer, the allowed
    pairs listed one by one, rotary positions as complex rotations."""
    r_count, length, dim = history.shape
    count = candidates.shape[1]
    total = length + count
    pos = list(range(length)) + [model.max_length] * count
    x = torch.cat([history, candidates], dim=1)
    if model.positions == "learned":
        x = x + model.position.weight[pos]
    allowed = torch.zeros(r_count, 1, total, total, dtype=torch.bool)
    for r in range(r_count):
        for i in range(total):
            for j in range(total):
                if i < length and j < length:
                    ok = bool(mask[r, j]) and (not model.causal or j >= i)
                elif i >= length and j < length:
                    ok = bool(mask[r, j])
                elif i >= length and j >= length:
                    ok = i == j
                else:
                    ok = False  # history never reads a candidate
                allowed[r, 0, i, j] = ok
            if not allowed[r, 0, i].any():
                allowed[r, 0, i, i] = True  # a padding query: its state is never read, only keep it finite
    heads = model.layers[0].num_heads
    head_dim = dim // heads

    def rotate(t):
        if model.positions != "rotary":
            return t
        half = head_dim // 2
        theta = torch.tensor([10000.0 ** (-2 * i / head_dim) for i in range(half)])
        phase = torch.polar(torch.ones(total, half), torch.tensor(pos, dtype=torch.float32)[:, None] * theta)
        z = torch.complex(t[..., :half], t[..., half:]) * phase
        return torch.cat([z.real, z.imag], dim=-1)

    for layer in model.layers:
        y = layer.attention_norm(x)
        q, k, v = (part.reshape(r_count, total, heads, head_dim).transpose(1, 2)
                   for part in F.linear(y, layer.qkv.weight, layer.qkv.bias).chunk(3, dim=-1))
        scores = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(head_dim)
        p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        x = x + layer.out((p @ v).transpose(1, 2).reshape(r_count, total, dim))
        x = x + layer.ffn_out(F.gelu(layer.ffn_in(layer.ffn_norm(x))))
    return model.final_norm(x)[:, length:]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("positions", POSITIONS)
def test_the_isolated_transformer_is_a_dense_transformer_with_the_spec_mask(positions, causal):
    model = make_transformer(positions, causal)
    history, mask, candidates = request_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_request(history, mask, candidates),
                                   dense_reference(model, history, mask, candidates))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("positions", POSITIONS)
def test_a_candidate_does_not_see_the_other_candidates(positions, causal):
    model = make_transformer(positions, causal)
    history, mask, candidates = request_inputs(num_candidates=4)
    with torch.no_grad():
        full = model.forward_request(history, mask, candidates)
        # Removed: candidates 1 and 3 alone.
        torch.testing.assert_close(model.forward_request(history, mask, candidates[:, [1, 3]]), full[:, [1, 3]])
        # Permuted.
        order = [2, 0, 3, 1]
        torch.testing.assert_close(model.forward_request(history, mask, candidates[:, order]), full[:, order])
        # Added: three new candidates around the old ones.
        extra = torch.randn(2, 3, 8)
        more = torch.cat([extra[:, :1], candidates, extra[:, 1:]], dim=1)
        torch.testing.assert_close(model.forward_request(history, mask, more)[:, 1:5], full)
        # And a single candidate through forward() is candidate k of the request.
        for k in range(4):
            torch.testing.assert_close(model(history, mask, candidates[:, k]), full[:, k])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("positions", POSITIONS)
def test_extra_padding_items_change_nothing(positions, causal):
    model = make_transformer(positions, causal)
    history, mask, candidates = request_inputs(length=4)
    padded_history = torch.cat([history, 100.0 * torch.randn(2, 2, 8)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_request(padded_history, padded_mask, candidates),
                                   model.forward_request(history, mask, candidates))
        torch.testing.assert_close(model.encode_history(padded_history, padded_mask)[:, :4],
                                   model.encode_history(history, mask))
        # What padding holds does not matter either.
        garbage = history.masked_fill(~mask.unsqueeze(-1), 7.0)
        torch.testing.assert_close(model(garbage, mask, candidates[:, 0]), model(history, mask, candidates[:, 0]))


@pytest.mark.parametrize("positions", POSITIONS)
def test_causal_history_tokens_do_not_see_more_recent_items(positions):
    history, mask, candidates = request_inputs(requests=1, length=5)
    changed = history.clone()
    # Item 1, more recent than items 2..4 (index 0 = most recent); not a constant shift, which layer norms hide.
    changed[:, 1] += torch.linspace(-1.0, 1.0, 8)
    for causal in (True, False):
        model = make_transformer(positions, causal)
        with torch.no_grad():
            before, after = model.encode_history(history, mask), model.encode_history(changed, mask)
            older_same = torch.allclose(after[:, 2:], before[:, 2:], atol=1e-5)
            assert older_same == causal, f"causal={causal}: older items' states unchanged is {older_same}"
            # Candidates read every real item either way.
            assert not torch.allclose(model(changed, mask, candidates[:, 0]), model(history, mask, candidates[:, 0]))
    # Without causality, item 0 reads item 1.
    with torch.no_grad():
        model = make_transformer(positions, False)
        assert not torch.allclose(model.encode_history(changed, mask)[:, 0], model.encode_history(history, mask)[:, 0])


def test_positions_count_from_the_most_recent_item():
    """With learned positions, item j and every candidate get rows j and max_length of the table: zeroing all other
    rows changes nothing."""
    model = make_transformer("learned")
    history, mask, candidates = request_inputs(length=3)
    with torch.no_grad():
        want = model.forward_request(history, mask, candidates)
        model.position.weight[3:6] = 0.0
        torch.testing.assert_close(model.forward_request(history, mask, candidates), want)
        model.position.weight[6] = 0.0
        assert not torch.allclose(model.forward_request(history, mask, candidates), want)


@pytest.mark.parametrize("positions", POSITIONS)
def test_every_parameter_receives_a_gradient(positions):
    model = make_transformer(positions, dropout=0.1).train()
    history, mask, candidates = request_inputs(length=6)
    model.forward_request(history, mask, candidates).pow(2).sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


@pytest.mark.parametrize("positions", POSITIONS)
def test_rows_without_real_items_are_finite_in_value_and_gradient(positions):
    model = make_transformer(positions, causal=True)
    history, mask, candidates = request_inputs()
    mask[1] = False
    history.requires_grad_(True)
    out = model.forward_request(history, mask, candidates)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(history.grad).all()
    assert history.grad[1].abs().sum() == 0  # nothing reads an all-padding history
    with torch.no_grad():  # such a candidate reads only itself: any history gives the same output
        torch.testing.assert_close(model(history * 5.0, mask, candidates[:, 0])[1], out[1, 0])
        assert (model.encode_history(history, mask)[1] == 0).all()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_exported_forward_and_forward_request_match_the_module(positions):
    model = make_transformer(positions)
    history, mask, candidates = request_inputs()
    candidate_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    single = torch.export.export(model, (history, mask, candidates[:, 0]))
    torch.testing.assert_close(single.module()(history, mask, candidates[:, 0]), model(history, mask, candidates[:, 0]))

    class Request(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, history, history_mask, candidates, candidate_mask):
            return self.inner.forward_request(history, history_mask, candidates, candidate_mask)

    requests, count = torch.export.Dim("requests"), torch.export.Dim("candidates")
    length = torch.export.Dim("length", min=2, max=model.max_length)
    program = torch.export.export(
        Request(model), (history, mask, candidates, candidate_mask),
        dynamic_shapes=({0: requests, 1: length}, {0: requests, 1: length}, {0: requests, 1: count},
                        {0: requests, 1: count}),
    )
    want = model.forward_request(history, mask, candidates, candidate_mask)
    torch.testing.assert_close(program.module()(history, mask, candidates, candidate_mask), want)
    assert (want[0, 3] == 0).all()
    # Other numbers of requests, history items and candidates through the same program.
    h3, m3, c3 = request_inputs(seed=5, requests=3, length=3, num_candidates=7)
    cm3 = torch.ones(3, 7, dtype=torch.bool)
    torch.testing.assert_close(program.module()(h3, m3, c3, cm3), model.forward_request(h3, m3, c3, cm3))


def test_attention_flops_counts_projections_history_and_isolated_candidate_attention():
    # B=2, L=3, C=4, D=8, 1 layer, m=2: T=7; projections (8 + 8) * 7 * 64 = 7168; history 4 * 9 * 8 = 288;
    # candidates 4 * 4 * 4 * 8 = 512 -> 7968 per request and layer.
    assert attention_flops(2, 3, 4, 8, num_layers=1, ffn_multiplier=2) == 2 * 7968
    assert attention_flops(2, 3, 4, 8, num_layers=3, ffn_multiplier=2) == 6 * 7968


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown positions 'sinusoid'"):
        CandidateIsolatedTransformer(8, positions="sinusoid")
    with pytest.raises(ValueError, match="not a multiple of num_heads 3"):
        CandidateIsolatedTransformer(8, num_heads=3)
    with pytest.raises(ValueError, match="even head width"):
        CandidateIsolatedTransformer(6, num_heads=2, positions="rotary")
    with pytest.raises(ValueError, match="history length 7 exceeds max_length 6"):
        make_transformer()(torch.randn(1, 7, 8), torch.ones(1, 7), torch.randn(1, 8))
