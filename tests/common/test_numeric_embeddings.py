"""Piecewise-linear encoding and numeric embeddings: exact encodings on hand-checked values, the batched per-feature
Linear, thinning of boundaries, and scripting."""

import math

import pytest
import torch

from common.numeric_embeddings import NumericEmbeddings, PiecewiseLinearEncoding, thin_boundaries

NAN, INF = math.nan, math.inf
# Feature 0: bins [0, 1], [1, 3]; feature 1: one bin [10, 20] (padded to two); feature 2: one bin [-2, 2].
BOUNDARIES = [[0.0, 1.0, 3.0], [10.0, 20.0], [-2.0, 2.0]]


@pytest.mark.parametrize(
    "row, expected",
    [
        # Below every first boundary: all zeros (feature 2: -5 < -2).
        ([-1.0, 5.0, -5.0], [[0, 0], [0, 0], [0, 0]]),
        # Inside a bin: earlier bins full, the bin holding x partial, later bins empty; padding stays 0.
        ([0.5, 15.0, 1.0], [[0.5, 0], [0.5, 0], [0.75, 0]]),
        ([2.0, 12.5, -1.0], [[1, 0.5], [0.25, 0], [0.25, 0]]),
        # Above every last boundary: all ones (padding 0).
        ([7.0, 25.0, 3.0], [[1, 1], [1, 0], [1, 0]]),
        # On boundaries.
        ([1.0, 20.0, -2.0], [[1, 0], [1, 0], [0, 0]]),
        # NaN and +-inf are encoded as the value 0 (feature 2: 0 is the middle of [-2, 2]).
        ([NAN, INF, NAN], [[0, 0], [0, 0], [0.5, 0]]),
        ([-INF, NAN, INF], [[0, 0], [0, 0], [0.5, 0]]),
    ],
)
def test_piecewise_linear_encoding_by_hand(row, expected):
    ple = PiecewiseLinearEncoding(BOUNDARIES)
    assert ple.num_bins == 2 and ple.bins_per_feature == [2, 1, 1]
    got = ple(torch.tensor([row]))
    torch.testing.assert_close(got, torch.tensor([expected], dtype=torch.float32))


def test_feature_without_bins_encodes_empty():
    ple = PiecewiseLinearEncoding([[5.0], [0.0, 1.0]])
    assert ple.bins_per_feature == [0, 1]
    torch.testing.assert_close(ple(torch.tensor([[7.0, 0.5]])), torch.tensor([[[0.0], [0.5]]]))


@pytest.mark.parametrize("bad", [[1.0, 1.0], [2.0, 1.0], [0.0, INF]])
def test_boundaries_must_be_finite_and_increasing(bad):
    with pytest.raises(ValueError, match="feature 1: boundaries must be finite and strictly increasing"):
        PiecewiseLinearEncoding([[0.0, 1.0], bad])


def test_numeric_embeddings_is_a_relu_linear_per_feature():
    torch.manual_seed(0)
    # Continuous tensor of 4 columns; columns 3 and 0 are embedded, in that order.
    module = NumericEmbeddings([3, 0], [[0.0, 1.0, 3.0], [10.0, 20.0]], embedding_dim=4)
    assert module.output_dim == 8 and module.weight.shape == (2, 2, 4) and module.bias.shape == (2, 4)
    x = torch.tensor([[15.0, 99.0, 99.0, 2.0], [NAN, 0.0, 0.0, -1.0]])
    out = module(x)
    assert out.shape == (2, 8)
    enc0 = torch.tensor([[1.0, 0.5], [0.0, 0.0]])  # column 3 (boundaries 0, 1, 3)
    enc1 = torch.tensor([[0.5], [0.0]])  # column 0 (boundaries 10, 20); NaN -> 0, below 10
    expected0 = torch.relu(enc0 @ module.weight[0] + module.bias[0])
    expected1 = torch.relu(enc1 @ module.weight[1, :1] + module.bias[1])
    torch.testing.assert_close(out, torch.cat([expected0, expected1], dim=1))
    # The padded bin of feature 1 never reaches the output, so it gets no gradient.
    out.sum().backward()
    assert module.weight.grad[1, 1].abs().sum() == 0 and module.weight.grad[0].abs().sum() > 0


def test_boundaries_are_saved_buffers_and_the_module_scripts():
    module = NumericEmbeddings([0, 1], BOUNDARIES[:2], embedding_dim=3)
    state = module.state_dict()
    assert {"encoding.lower", "encoding.inv_width", "encoding.mask", "weight", "bias"} <= set(state)
    scripted = torch.jit.script(module)
    x = torch.tensor([[0.5, 12.0], [NAN, 30.0], [-3.0, INF]])
    torch.testing.assert_close(scripted(x), module(x))


def test_thin_boundaries():
    values = [float(i) for i in range(9)]  # 8 bins
    assert thin_boundaries(values, 8) == values
    assert thin_boundaries(values, 4) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert thin_boundaries(values, 1) == [0.0, 8.0]
    assert thin_boundaries(values, 3) == [0.0, 3.0, 5.0, 8.0]  # round(8/3)=3, round(16/3)=5
    with pytest.raises(ValueError, match="max_bins must be at least 1"):
        thin_boundaries(values, 0)
