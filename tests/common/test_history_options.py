"""The history group's optional inputs: action weights, time decay, candidate features, the mean-pooled branch,
ordinal (rating) match features and the transformer's user token. Each keeps the request path equal to row by row,
the packed CPU path equal to the padded one and a candidate's output independent of the other candidates."""

import math
import sys
from pathlib import Path

import pytest
import torch

from common.history import HistoryEncoder, HistoryTokens, ItemWeights, padded_history
from common.history_inputs import packed_history
from common.history_match import match_features, packed_match_features
from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling

sys.path.insert(0, str(Path(__file__).parent))
from history_helpers import encoder_module  # noqa: E402

L, D, F, K = 6, 8, 5, 4  # history length, block width, row features, action types


def _encoder(kind: str, weights: bool = True, candidate_features: bool = True, mean_pooling: bool = True,
             ordinal: bool = True, user_token: bool = False, num_continuous: int = 2) -> HistoryEncoder:
    torch.manual_seed(3)
    tokens = HistoryTokens(D, {"a": (50, True), "t": (20, False)}, num_actions=K, num_continuous=num_continuous,
                           candidate_features=F if candidate_features else 0)
    if tokens.candidate_projection is not None:  # not zero, so that the features matter in the tests
        torch.nn.init.normal_(tokens.candidate_projection.weight)
    width = tokens.dim
    module = encoder_module(kind, width, L, "mean")
    item_weights = ItemWeights(K, True, 1, 10.0) if weights and not kind.startswith("transformer") else None
    if item_weights is not None:
        with torch.no_grad():
            item_weights.action_scale.copy_(torch.tensor([1.0, -0.5, 2.0, 0.0]))
    return HistoryEncoder("h", tokens, module, L, share_requests=False, candidate_columns=["a", "t"],
                          item_weights=item_weights, ordinal_actions=ordinal, mean_pooling=mean_pooling,
                          user_token=user_token).eval()


def _inputs(request_of_row: torch.Tensor, seed: int = 0, num_continuous: int = 2
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Padded histories of the requests (every fourth one empty; ids shared with the candidates so that matches
    occur), candidate ids and row features [rows, F]."""
    g = torch.Generator().manual_seed(seed)
    requests, rows = int(request_of_row.max()) + 1, request_of_row.shape[0]
    lengths = torch.randint(1, L + 1, (requests,), generator=g)
    lengths[3::4] = 0
    n = int(lengths.sum())
    group = {"lengths": lengths, "id:a": torch.randint(-5, 5, (n,), generator=g),
             "id:t": torch.randint(0, 6, (n,), generator=g), "actions": torch.randint(0, K, (n,), generator=g)}
    if num_continuous:
        group["continuous"] = torch.rand(n, num_continuous, generator=g) * 50
    inputs = padded_history(group, L, "h/")
    inputs["h/candidate:a"] = torch.randint(-5, 5, (rows,), generator=g)
    inputs["h/candidate:t"] = torch.randint(0, 6, (rows,), generator=g)
    return inputs, torch.randn(rows, F, generator=g)


def _row_by_row(inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v if "candidate:" in k else v[request_of_row] for k, v in inputs.items()}


KINDS = ["pooling", "target_attention", "target_attention_softmax", "transformer", "transformer_rotary_causal"]


@pytest.mark.parametrize("num_continuous", [2, 0])
@pytest.mark.parametrize("kind", KINDS)
def test_with_every_option_the_request_path_equals_row_by_row(kind, num_continuous):
    """With continuous columns (and then time decay) or without (the candidate features' block alone)."""
    encoder = _encoder(kind, weights=bool(num_continuous), user_token=kind.startswith("transformer"),
                       num_continuous=num_continuous)
    request_of_row = torch.tensor([2, 1, 1, 3, 0, 1, 3, 2, 1, 3, 4])
    inputs, features = _inputs(request_of_row, num_continuous=num_continuous)
    with torch.no_grad():
        shared = encoder(inputs, request_of_row, features)
        alone = encoder(_row_by_row(inputs, request_of_row), None, features)
    assert shared.shape == (11, encoder.output_dim)
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5)
    # Consecutive rows sharing a history (share_requests) take the request path too, with the same result.
    order = torch.sort(request_of_row, stable=True).indices
    encoder.share_requests = True
    sorted_rows = {k: v[order] for k, v in _row_by_row(inputs, request_of_row).items()}
    with torch.no_grad():
        grouped = encoder(sorted_rows, None, features[order])
    torch.testing.assert_close(grouped, alone[order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["target_attention", "transformer"])
def test_with_every_option_a_candidate_reads_no_other_candidate(kind):
    encoder = _encoder(kind, user_token=kind == "transformer")
    request_of_row = torch.tensor([0, 0, 0, 1, 1, 0])
    inputs, features = _inputs(request_of_row, seed=4)
    keep = torch.tensor([5, 3])
    with torch.no_grad():
        full = encoder(inputs, request_of_row, features)
        part = encoder({k: v[keep] if "candidate:" in k else v for k, v in inputs.items()}, torch.tensor([0, 1]),
                       features[keep])
    torch.testing.assert_close(part, full[keep], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["pooling", "target_attention", "target_attention_softmax"])
def test_with_every_option_the_packed_path_equals_the_padded_one(kind, monkeypatch):
    encoder = _encoder(kind).train()
    request_of_row = torch.arange(9)
    inputs, features = _inputs(request_of_row, seed=5)
    assert encoder.packs(inputs["h/mask"])
    packed = encoder(inputs, None, features)
    params = [p for p in encoder.parameters() if p.requires_grad]
    grads = torch.autograd.grad(packed.square().sum(), params, allow_unused=True)
    monkeypatch.setattr(HistoryEncoder, "packs", lambda self, mask: False)
    padded = encoder(inputs, None, features)
    padded_grads = torch.autograd.grad(padded.square().sum(), params, allow_unused=True)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
    for got, want in zip(grads, padded_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The item weights and the candidate projection are trained.
    named = dict(zip([n for n, p in encoder.named_parameters() if p.requires_grad], grads))
    assert named["item_weights.decay"].abs() > 0 and named["item_weights.action_scale"].abs().sum() > 0
    assert named["tokens.candidate_projection.weight"].abs().sum() > 0


@pytest.mark.parametrize("kind", ["pooling", "target_attention"])
def test_initial_item_weights_and_candidate_projection_leave_the_model_unchanged(kind):
    """Action scales of 1 and a zero projection give today's outputs; the decay does not (it starts at 1/24 h)."""
    request_of_row = torch.arange(7)
    inputs, features = _inputs(request_of_row, seed=6)
    torch.manual_seed(0)
    plain = _encoder(kind, weights=False, candidate_features=False, mean_pooling=False, ordinal=False)
    torch.manual_seed(0)
    opted = _encoder(kind, weights=False, candidate_features=True, mean_pooling=False, ordinal=False)
    opted.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.zeros_(opted.tokens.candidate_projection.weight)
    opted.item_weights = ItemWeights(K, action_weights=True)
    with torch.no_grad():
        got, want = opted(inputs, None, features), plain(inputs)
    # The same values but for the weighted match count that follows each column's 2 + K match features.
    per_column = 2 + K
    keep = [*range(64), *range(64, 64 + per_column), *range(65 + per_column, 65 + 2 * per_column)]
    assert got.shape[1] == want.shape[1] + 2
    torch.testing.assert_close(got[:, keep], want, rtol=0, atol=1e-6)


def test_item_weights_scale_each_items_contribution():
    weights = ItemWeights(3, action_weights=True, decay_column=1, decay_init_hours=24.0)
    assert torch.nn.functional.softplus(weights.decay).item() == pytest.approx(1 / 24)
    with torch.no_grad():
        weights.action_scale.copy_(torch.tensor([1.0, 0.0, -2.0]))
    actions = torch.tensor([[0, 1, 2]])
    ages = torch.tensor([[[9.0, 0.0], [9.0, 24.0], [9.0, float("nan")]]])
    got = weights(actions, ages)
    assert got[0].tolist() == pytest.approx([1.0, 0.0, -2.0])  # age 0, and a NaN age counts as 0
    ages[0, 0, 1] = 48.0
    assert weights(actions, ages)[0, 0].item() == pytest.approx(math.exp(-2))
    # Sum pooling with weights: sum_j g_j e_j; an action scaled by 0 drops its items.
    history = torch.randn(1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    out = HistoryPooling("sum")(history, mask, torch.tensor([[0.5, 0.0, 7.0]]))
    torch.testing.assert_close(out, 0.5 * history[:, 0])
    with pytest.raises(ValueError, match="action_weights needs the group's action types"):
        ItemWeights(None, action_weights=True)


def test_the_candidate_token_projects_the_row_features():
    tokens = HistoryTokens(4, {"a": (10, True)}, num_actions=2, candidate_features=3)
    assert tokens.dim == 12 and tokens.continuous is not None and tokens.num_continuous == 0
    with torch.no_grad():
        tokens.candidate_projection.weight.copy_(torch.arange(12.0).view(4, 3))
    inputs = {"h/candidate:a": torch.tensor([1, 2]), "h/id:a": torch.tensor([[1, 2]] * 2),
              "h/actions": torch.zeros(2, 2, dtype=torch.int64)}
    features = torch.tensor([[1.0, 0.0, 0.0], [float("nan"), 0.0, 1.0]])
    c = tokens.candidate(inputs, "h/", inputs["h/candidate:a"], features)
    bias = tokens.continuous.bias
    torch.testing.assert_close(c[:, 8:], bias + torch.tensor([[0.0, 3.0, 6.0, 9.0], [2.0, 5.0, 8.0, 11.0]]))
    # The items' continuous block is the bias alone (the group has no continuous columns).
    torch.testing.assert_close(tokens.items(inputs, "h/")[..., 8:], bias.expand(2, 2, 4))
    with pytest.raises(ValueError, match=r"history group 'h' projects the candidate's features into its token: "
                                         r"it needs them one row per candidate \(2 rows\), got None"):
        tokens.candidate(inputs, "h/", inputs["h/candidate:a"])


def test_ordinal_match_features_are_mean_ratings_and_weighted_matches():
    inputs = {
        "h/mask": torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4]),
        "h/id:a": torch.tensor([[7, 2, 7, 7], [3, 0, 0, 0], [7, 7, 7, 7]]),
        "h/actions": torch.tensor([[4, 0, 1, 2], [2, 0, 0, 0], [0, 0, 0, 0]]),  # ratings 0..4
        "h/candidate:a": torch.tensor([7, 9, 7]),
    }
    weight = torch.tensor([[1.0, 5.0, -3.0, 9.0], [1.0, 1.0, 1.0, 1.0], [1.0] * 4])
    history_mean, column = match_features(inputs, "h/", ["a"], 5, ordinal=True, weight=weight)
    # The history's mean rating: (4 + 0 + 1) / 3 in [0, 4], scaled to [-1, 1]; row 1: rating 2 -> 0; empty -> 0.
    torch.testing.assert_close(history_mean[:, 0], torch.tensor([5 / 3 / 2 - 1, 0.0, 0.0]))
    assert column.shape == (3, 2 + 5 + 1 + 1)
    # Row 0 matches items 0 (rating 4) and 2 (rating 1): mean 2.5 -> 0.25; weighted sum 1 - 3 = -2 -> -log(3).
    assert column[0, 7].item() == pytest.approx(0.25)
    assert column[0, 8].item() == pytest.approx(-math.log(3.0))
    assert column[1:, 7:].abs().sum() == 0  # no matches
    packed = packed_match_features(inputs, *packed_history(inputs, "h/"), "h/", ["a"], 5, True, weight[inputs["h/mask"]])
    torch.testing.assert_close(torch.cat(packed, 1), torch.cat([history_mean, column], 1), rtol=0, atol=1e-6)


def test_the_user_token_takes_part_in_the_transformer():
    torch.manual_seed(0)
    model = CandidateIsolatedTransformer(8, num_layers=1, num_heads=2, max_length=L).eval()
    history, mask, candidate = torch.randn(2, L, 8), torch.ones(2, L, dtype=torch.bool), torch.randn(2, 8)
    mask[1] = False  # an empty history: the candidate reads itself and u
    user = torch.randn(2, 8)
    with torch.no_grad():
        without, with_user = model(history, mask, candidate), model(history, mask, candidate, user)
        assert model.encode_history(history, mask, user).shape == (2, L, 8)
        with pytest.raises(ValueError, match=r"user token has shape \(8,\); expected \[2, 8\]"):
            model(history, mask, candidate, user[0])
    assert torch.isfinite(with_user).all()
    # Causal: every item reads u (the oldest token), so the items' states move with it.
    causal = CandidateIsolatedTransformer(8, num_layers=1, num_heads=2, max_length=L, causal=True).eval()
    with torch.no_grad():
        moved = causal.encode_history(history, mask, user) - causal.encode_history(history, mask)
    assert moved[0].abs().amax(dim=1).min() > 1e-3 and moved[1].abs().sum() == 0  # padding stays 0
    assert (without - with_user).abs().amax(dim=1).min() > 1e-3  # u moves every row, the empty one included
    # The encoder's learned u gets a gradient and is the same for every request.
    encoder = _encoder("transformer", weights=False, user_token=True).train()
    request_of_row = torch.tensor([0, 0, 1])
    inputs, features = _inputs(request_of_row, seed=8)
    encoder(inputs, request_of_row, features).square().sum().backward()
    assert encoder.user.grad is not None and encoder.user.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="a user token needs the transformer encoder"):
        _encoder("pooling", user_token=True)
    with pytest.raises(ValueError, match="item weights .* apply to pooling and target attention, not to the "
                                         "transformer"):
        HistoryEncoder("h", encoder.tokens, encoder.encoder, L, item_weights=ItemWeights(K, True))


def test_output_width_counts_every_option():
    encoder = _encoder("target_attention")
    # [encoded, mean, candidate] 3 x 32, then the history's mean rating and per column 2 + K + 1 + 1.
    assert encoder.output_dim == 3 * 32 + 1 + 2 * (2 + K + 2)
    request_of_row = torch.arange(3)
    inputs, features = _inputs(request_of_row)
    with torch.no_grad():
        assert encoder(inputs, None, features).shape == (3, encoder.output_dim)
