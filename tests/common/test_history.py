"""History inputs and the request path: padding, tokens, and one encoding per request equal to row by row."""

import sys
from pathlib import Path

import pytest
import torch

from common.history import (
    HistoryEncoder,
    HistoryTokens,
    packed_history,
    pad_jagged,
    padded_history,
    request_groups,
)
from common.history_match import match_features, packed_match_features
from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention

sys.path.insert(0, str(Path(__file__).parent))
from history_helpers import ENCODERS, encoder_module  # noqa: E402

L, D = 6, 8


def _encoder(kind: str, share: bool, matched: list[str] | None = None) -> HistoryEncoder:
    torch.manual_seed(0)
    tokens = HistoryTokens(D, {"a": (50, True), "t": (20, False)}, num_actions=3, num_continuous=1)
    width = tokens.dim
    module = {"transformer": CandidateIsolatedTransformer(width, num_layers=2, num_heads=2, max_length=L),
              "target_attention": TargetAttention(width, (8,), softmax=True),
              "pooling": HistoryPooling("mean", width)}[kind]
    return HistoryEncoder("h", tokens, module, L, share, matched).eval()


def _requests(sizes: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded inputs of requests with sizes[r] candidates each: one history per request, repeated on its rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (len(sizes),), generator=g)
    lengths[0] = 0
    n = int(lengths.sum())
    group = {"lengths": lengths, "id:a": torch.randint(-1000, 1000, (n,), generator=g),
             "id:t": torch.randint(0, 100, (n,), generator=g), "actions": torch.randint(0, 3, (n,), generator=g),
             "continuous": torch.rand(n, 1, generator=g) * 50}
    per_request = padded_history(group, L, "h/")
    repeat = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    inputs = {k: v[repeat] for k, v in per_request.items()}
    rows = int(sum(sizes))
    inputs["h/candidate:a"] = torch.randint(-1000, 1000, (rows,), generator=g)
    inputs["h/candidate:t"] = torch.randint(0, 100, (rows,), generator=g)
    return inputs


@pytest.mark.parametrize("kind", ["transformer", "target_attention"])
def test_one_encoding_per_request_equals_row_by_row(kind):
    inputs = _requests([3, 1, 5, 2])
    groups = request_groups(inputs, "h/")
    assert groups is not None and groups[0].tolist() == [0, 3, 4, 9]
    assert groups[2].tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1]
    with torch.no_grad():
        shared = _encoder(kind, True)(inputs)
        alone = _encoder(kind, False)(inputs)
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "target_attention"])
def test_a_candidates_score_does_not_depend_on_the_other_candidates(kind):
    inputs = _requests([4, 3])
    encoder = _encoder(kind, True)
    with torch.no_grad():
        full = encoder(inputs)
        # Reverse the first request's candidates and drop two rows of the second one.
        keep = torch.tensor([3, 2, 1, 0, 5])
        part = encoder({k: v[keep] for k, v in inputs.items()})
    torch.testing.assert_close(part, full[keep], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["pooling", "target_attention"])
def test_the_packed_row_path_equals_the_padded_one_in_value_and_gradient(kind, monkeypatch):
    inputs = _requests([1] * 7, seed=5)  # one row per request: the row path, as in training
    inputs["h/id:a"][:, 1] = inputs["h/candidate:a"]  # matches beside the chance ones, at position 1 (or padding)
    inputs["h/id:t"][2:5, :] = inputs["h/candidate:t"][2:5, None]
    encoder = _encoder(kind, True, ["a", "t"]).train()
    assert encoder.packs(inputs["h/mask"])
    packed = encoder(inputs)
    grads = torch.autograd.grad(packed.square().sum(), list(encoder.parameters()), allow_unused=True)
    monkeypatch.setattr(HistoryEncoder, "packs", lambda self, mask: False)
    padded = encoder(inputs)
    want = torch.autograd.grad(padded.square().sum(), list(encoder.parameters()), allow_unused=True)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-6)
    for (name, _), a, b in zip(encoder.named_parameters(), grads, want):
        assert (a is None) == (b is None), name
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5, msg=name)  # float32 sums in another order


def test_shared_requests_keep_the_request_path_on_the_cpu(monkeypatch):
    inputs = _requests([3, 2])
    encoder = _encoder("target_attention", True)
    calls = []
    through = HistoryEncoder._encode_requests
    monkeypatch.setattr(HistoryEncoder, "_encode_requests",
                        lambda self, *args: calls.append(args[1].tolist()) or through(self, *args))
    encoder(inputs)
    assert calls == [[0, 0, 0, 1, 1]]  # two requests, each history encoded once


def test_packed_history_lists_the_real_items_in_order():
    group = {"lengths": torch.tensor([2, 0, 3]), "id:a": torch.tensor([5, 6, 7, 8, 9]),
             "continuous": torch.arange(10.0).reshape(5, 2), "candidate:a": torch.tensor([1, 2, 3])}
    items, rows, positions = packed_history(padded_history(group, 4, "p/"), "p/")
    assert rows.tolist() == [0, 0, 2, 2, 2] and positions.tolist() == [0, 1, 0, 1, 2]
    assert set(items) == {"p/id:a", "p/continuous"}
    assert items["p/id:a"].tolist() == [5, 6, 7, 8, 9]
    torch.testing.assert_close(items["p/continuous"], group["continuous"])


def test_the_transformer_and_other_devices_keep_the_padded_form():
    inputs = _requests([1, 1], seed=1)
    assert not _encoder("transformer", True).packs(inputs["h/mask"])
    assert not _encoder("target_attention", True).packs(inputs["h/mask"].to("meta"))


def test_rows_without_shared_histories_take_the_row_path():
    inputs = _requests([1, 1, 1], seed=3)
    assert request_groups(inputs, "h/") is None
    encoder = _encoder("pooling", True)
    with torch.no_grad():
        out = encoder(inputs)
    width = 4 * D  # two id blocks, the action block and the continuous block
    assert out.shape == (3, 2 * width) and out[0, :width].abs().sum() == 0  # request 0 has an empty history


def test_pad_jagged_and_the_candidate_action_index():
    padded = pad_jagged(torch.tensor([5, 6, 7]), torch.tensor([0, 2, 1]), 3)
    assert padded.tolist() == [[0, 0, 0], [5, 6, 0], [7, 0, 0]]
    tokens = HistoryTokens(4, {"a": (10, False), "b": (7, False)}, num_actions=2, num_continuous=1)
    assert tokens.dim == 16
    inputs = {"p/candidate:a": torch.tensor([13])}  # 13 mod 10; column b has no candidate
    expected = torch.cat([tokens.tables[0].weight[3], torch.zeros(4), tokens.actions.weight[2],
                          tokens.continuous.bias])
    torch.testing.assert_close(tokens.candidate(inputs, "p/", torch.zeros(1, 1))[0], expected)
    # An item whose id equals the candidate's shows it as a block where the tokens agree.
    items = {"p/id:a": torch.tensor([[3, 4]]), "p/id:b": torch.tensor([[1, 1]]), "p/actions": torch.tensor([[0, 1]]),
             "p/continuous": torch.tensor([[[5.0], [-1.0]]])}
    e = tokens.items(items, "p/")
    assert e.shape == (1, 2, 16)
    torch.testing.assert_close(e[0, 0, :4], expected[:4])
    torch.testing.assert_close(e[0, 1, 12:], tokens.continuous(torch.tensor([-torch.log1p(torch.tensor(1.0))])))


def test_match_features_count_exact_id_matches_by_recency_and_action():
    tokens = HistoryTokens(4, {"a": (10, True), "t": (5, False)}, num_actions=3)
    encoder = HistoryEncoder("h", tokens, HistoryPooling("sum", tokens.dim), 4, candidate_columns=["a"])
    assert encoder.output_dim == 2 * 12 + 5
    inputs = {
        "h/mask": torch.tensor([[True, True, True, False], [True, False, False, False]]),
        # Row 0: the candidate id 7 is the most recent and the third item (a reply, then a favorite); the padding
        # slot also holds 7 but does not count. Row 1: no match.
        "h/id:a": torch.tensor([[7, 2, 7, 7], [3, 0, 0, 0]]),
        "h/id:t": torch.zeros(2, 4, dtype=torch.int64),
        "h/actions": torch.tensor([[1, 0, 0, 2], [0, 0, 0, 0]]),
        "h/candidate:a": torch.tensor([7, 9]),
    }
    [features] = match_features(inputs, "h/", ["a"], 3)
    log2 = torch.log1p(torch.tensor(2.0))
    log1 = torch.log1p(torch.tensor(1.0))
    torch.testing.assert_close(features[0], torch.stack([log2, torch.tensor(1 + 1 / 3), log1, log1, torch.tensor(0.0)]))
    assert features[1].abs().sum() == 0
    assert encoder(inputs).shape == (2, 29)
    # The packed form (the CPU row path) counts the same; an action id outside [0, num_actions) counts nowhere.
    inputs["h/actions"][0, 2] = 5
    [padded] = match_features(inputs, "h/", ["a"], 3)
    [packed] = packed_match_features(inputs, *packed_history(inputs, "h/"), "h/", ["a"], 3)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-7)
    assert packed[0, 2:].tolist() == [0.0, pytest.approx(float(log1)), 0.0]


def test_an_output_projection_sets_the_groups_width():
    tokens = HistoryTokens(4, {"a": (10, True)}, num_actions=2)
    encoder = HistoryEncoder("h", tokens, TargetAttention(tokens.dim, (4,)), 2, candidate_columns=["a"],
                             output_dim=5)
    inputs = {"h/mask": torch.tensor([[True, False]]), "h/id:a": torch.tensor([[1, 2]]),
              "h/actions": torch.tensor([[0, 1]]), "h/candidate:a": torch.tensor([1])}
    out = encoder(inputs)
    assert encoder.output_dim == 5 and out.shape == (1, 5)
    torch.testing.assert_close(out, encoder.projection(encoder._encode(inputs)))


# The request path: the history tensors hold one row per request, the candidate ids one per row, request_of_row
# each row's request.


def _variant(kind: str, features: str) -> HistoryEncoder:
    """An encoder of this kind over ids only (features "ids") or ids, actions, continuous values and match
    features ("all")."""
    torch.manual_seed(1)
    full = features == "all"
    tokens = HistoryTokens(D, {"a": (50, True), "t": (20, False)}, num_actions=3 if full else None,
                           num_continuous=2 if full else 0)
    width = tokens.dim
    module = encoder_module(kind, width, L)
    return HistoryEncoder("h", tokens, module, L, share_requests=False,
                          candidate_columns=["a", "t"] if full else None).eval()


def _request_inputs(encoder: HistoryEncoder, request_of_row: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded histories of R = max(request_of_row) + 1 requests (requests 3, 7, ... empty, some ids
    shared with the candidates so that matches occur) and one candidate id per row."""
    g = torch.Generator().manual_seed(seed)
    requests, rows = int(request_of_row.max()) + 1, request_of_row.shape[0]
    lengths = torch.randint(1, L + 1, (requests,), generator=g)
    lengths[3::4] = 0
    n = int(lengths.sum())
    group = {"lengths": lengths, "id:a": torch.randint(-5, 5, (n,), generator=g),
             "id:t": torch.randint(0, 6, (n,), generator=g)}
    if encoder.tokens.num_actions is not None:
        group["actions"] = torch.randint(0, 3, (n,), generator=g)
    if encoder.tokens.continuous is not None:
        group["continuous"] = torch.rand(n, 2, generator=g) * 50
    inputs = padded_history(group, L, "h/")
    inputs["h/candidate:a"] = torch.randint(-5, 5, (rows,), generator=g)
    inputs["h/candidate:t"] = torch.randint(0, 6, (rows,), generator=g)
    return inputs


def _row_by_row(inputs: dict[str, torch.Tensor], request_of_row: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v if "candidate:" in k else v[request_of_row] for k, v in inputs.items()}


@pytest.mark.parametrize("features", ["all", "ids"])
@pytest.mark.parametrize("kind", ENCODERS)
def test_the_request_path_equals_row_by_row(kind, features):
    encoder = _variant(kind, features)
    cases = {
        "one request of one candidate": torch.tensor([0]),
        "one request of nine candidates": torch.zeros(9, dtype=torch.int64),
        "one empty history, three candidates": torch.zeros(3, dtype=torch.int64),
        # Requests of 1, 4, 2, 3 and 1 candidates, rows in no particular order; request 3 has no items.
        "mixed, unordered": torch.tensor([2, 1, 1, 3, 0, 1, 3, 2, 1, 3, 4]),
    }
    for name, request_of_row in cases.items():
        inputs = _request_inputs(encoder, request_of_row, seed=len(name))
        if name.startswith("one empty"):
            inputs["h/mask"][:] = False
        assert inputs["h/mask"][0].any() == (not name.startswith("one empty")), name
        with torch.no_grad():
            shared = encoder(inputs, request_of_row)
            alone = encoder(_row_by_row(inputs, request_of_row))
            identity = encoder(_row_by_row(inputs, request_of_row), torch.arange(request_of_row.shape[0]))
        assert shared.shape == (request_of_row.shape[0], encoder.output_dim), name
        torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(identity, alone, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["target_attention", "transformer"])
def test_on_the_request_path_a_candidate_reads_no_other_candidate(kind):
    encoder = _variant(kind, "all")
    request_of_row = torch.tensor([0, 0, 0, 1, 1, 0])
    inputs = _request_inputs(encoder, request_of_row, seed=4)
    with torch.no_grad():
        full = encoder(inputs, request_of_row)
        # Rows 5 and 3 alone, each as the only candidate of its request.
        keep = torch.tensor([5, 3])
        part = encoder({k: v[keep] if "candidate:" in k else v for k, v in inputs.items()}, torch.tensor([0, 1]))
    torch.testing.assert_close(part, full[keep], rtol=0, atol=1e-5)


def test_request_slots_place_each_row_after_the_earlier_rows_of_its_request():
    from common.history import request_slots

    slot, width = request_slots(torch.tensor([2, 0, 2, 2, 1, 0]), 4)
    assert slot.tolist() == [0, 0, 1, 2, 0, 1] and width == 3


def test_non_finite_continuous_history_values_count_as_zero():
    encoder = _variant("target_attention", "all")
    request_of_row = torch.tensor([0, 1, 1, 2])
    inputs = _request_inputs(encoder, request_of_row, seed=2)
    zeroed = dict(inputs, **{"h/continuous": inputs["h/continuous"].clone()})
    bad = dict(inputs, **{"h/continuous": inputs["h/continuous"].clone()})
    # Real items of requests 1 and 2, and the last slot of request 1 (an item or padding).
    for value, (r, j) in zip((float("nan"), float("inf"), float("-inf")), ((1, 0), (2, 0), (1, L - 1))):
        bad["h/continuous"][r, j, 0] = value
        zeroed["h/continuous"][r, j, 0] = 0.0
    with torch.no_grad():
        got = encoder(bad, request_of_row)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, encoder(zeroed, request_of_row), rtol=0, atol=0)


def test_bad_history_inputs_are_named_errors():
    encoder = _variant("transformer", "all")
    request_of_row = torch.tensor([0, 1, 1])
    inputs = _request_inputs(encoder, request_of_row, seed=3)
    assert inputs["h/mask"][1].any()
    for value in (3, -1):
        actions = inputs["h/actions"].clone()
        actions[1, 0] = value
        with pytest.raises(ValueError, match=rf"h/actions holds 1 values outside \[0, 3\) \(first: {value}; "
                                             r"model.sequences.h.num_actions is 3\)"):
            encoder({**inputs, "h/actions": actions}, request_of_row)
    with pytest.raises(TypeError, match=r"h/id:a holds torch.float32 values; it takes integer ids"):
        encoder({**inputs, "h/id:a": inputs["h/id:a"].float()}, request_of_row)
    with pytest.raises(TypeError, match=r"h/candidate:t holds torch.float64 values"):
        encoder({**inputs, "h/candidate:t": inputs["h/candidate:t"].double()}, request_of_row)
    with pytest.raises(TypeError, match=r"request_of_row holds torch.float32 values"):
        encoder(inputs, request_of_row.float())
    with pytest.raises(ValueError, match=r"request_of_row holds 1 values outside \[0, 2\) \(first: 2; one request "
                                         r"per row of the history tensors of group 'h'\)"):
        encoder(inputs, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"h/id:t has shape \(2, 5\) but h/mask has \(2, 6\): the tensors of "
                                         r"history group 'h' hold the same rows and items"):
        encoder({**inputs, "h/id:t": inputs["h/id:t"][:, :5]}, request_of_row)
    with pytest.raises(ValueError, match=r"h/candidate:a has shape \(2,\); expected one id per candidate row \(3, "
                                         r"request_of_row's rows\)"):
        encoder({**inputs, "h/candidate:a": inputs["h/candidate:a"][:2]}, request_of_row)
    with pytest.raises(KeyError, match=r"history group 'h': inputs \['h/actions'\] are missing"):
        encoder({k: v for k, v in inputs.items() if k != "h/actions"}, request_of_row)
