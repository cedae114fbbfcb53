"""DCN v2 cross layers (full and low rank) on hand-checked inputs, and the stacked / parallel layouts."""

import pytest
import torch

from common.dcn import CrossLayer, Dcn
from common.mlp import MlpSpec


def test_full_rank_cross_layers():
    dcn = Dcn(2, num_cross_layers=2)
    first, second = dcn.cross_layers
    with torch.no_grad():
        first.weight.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        first.weight.bias.copy_(torch.tensor([1.0, -1.0]))
        second.weight.weight.copy_(torch.eye(2))
        second.weight.bias.zero_()
    x0 = torch.tensor([[1.0, 2.0]])
    # layer 1: x0 * (W x0 + b) + x0 = [1, 2] * [6, 1] + [1, 2] = [7, 4]
    torch.testing.assert_close(first(x0, x0), torch.tensor([[7.0, 4.0]]))
    # layer 2: x0 * x1 + x1 = [7, 8] + [7, 4]
    torch.testing.assert_close(dcn(x0)["output"], torch.tensor([[14.0, 12.0]]))
    assert dcn.output_dim == 2


def test_low_rank_cross_layer():
    layer = CrossLayer(2, projection_dim=1)
    down, up = layer.weight
    assert down.weight.shape == (1, 2) and down.bias is None and up.weight.shape == (2, 1)
    with torch.no_grad():
        down.weight.copy_(torch.tensor([[1.0, 1.0]]))
        up.weight.copy_(torch.tensor([[1.0], [2.0]]))
        up.bias.copy_(torch.tensor([0.0, 1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    # U V^T x + b = [3, 7]; x0 * [3, 7] + x0 = [4, 16]
    torch.testing.assert_close(layer(x0, x0), torch.tensor([[4.0, 16.0]]))


def test_stacked_parallel_and_output_mlp_widths():
    x = torch.randn(5, 6)
    stacked = Dcn(6, 2, projection_dim=3, stacked_mlp=MlpSpec((8, 4)))
    assert stacked.output_dim == 4 and stacked(x)["output"].shape == (5, 4)
    parallel = Dcn(6, 1, parallel_mlp=MlpSpec((8, 4)))
    assert parallel.output_dim == 10 and parallel(x)["output"].shape == (5, 10)
    # The parallel output is the cross output next to the MLP's.
    torch.testing.assert_close(parallel(x)["output"][:, :6], parallel.cross_layers[0](x, x))
    with_output = Dcn(6, 1, parallel_mlp=MlpSpec((8, 4)), output_mlp=MlpSpec((3,)))
    assert with_output.output_mlp.in_features == 10
    assert with_output.output_dim == 3 and with_output(x)["output"].shape == (5, 3)


def test_stacked_and_parallel_together_is_an_error():
    with pytest.raises(ValueError, match="not both"):
        Dcn(4, 1, stacked_mlp=MlpSpec((2,)), parallel_mlp=MlpSpec((2,)))
