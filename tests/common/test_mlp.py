"""Mlp: layer structure, a one-layer Mlp, and its reported output width."""

import torch
from torch import nn

from common.mlp import Mlp, MlpSpec


def test_one_layer_mlp_is_one_linear():
    mlp = Mlp(3, [2])
    assert mlp.output_dim == 2
    assert [type(m) for m in mlp.layers] == [nn.Linear]
    x = torch.randn(4, 3)
    lin = mlp.layers[0]
    torch.testing.assert_close(mlp(x)["output"], x @ lin.weight.T + lin.bias)


def test_hidden_layers_batch_norm_dropout_and_final_activation():
    mlp = Mlp(
        5, [8, 6, 2], batch_norm=True, batch_norm_momentum=0.3, dropout=0.5, final_layer_activation=True
    )
    kinds = [type(m) for m in mlp.layers]
    # With the final activation the last size is a hidden layer like the others (BatchNorm and dropout too).
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 3
    assert mlp.layers[1].momentum == 0.3
    assert mlp.output_dim == 2
    mlp.eval()
    mlp.layers[-1].p = 0.0
    out = mlp(torch.randn(7, 5))["output"]
    assert out.shape == (7, 2) and (out >= 0).all()


def test_hidden_layer_maths():
    mlp = Mlp(2, [2, 1])
    with torch.no_grad():
        mlp.layers[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
        mlp.layers[0].bias.copy_(torch.tensor([0.0, -5.0]))
        mlp.layers[2].weight.copy_(torch.tensor([[3.0, 1.0]]))
        mlp.layers[2].bias.copy_(torch.tensor([0.5]))
    # hidden = relu([3 - 1, 6 - 5]) = [2, 1]; out = 3*2 + 1 + 0.5
    out = mlp(torch.tensor([[3.0, 1.0]]))["output"]
    torch.testing.assert_close(out, torch.tensor([[7.5]]))


def test_spec_builds_for_an_input_width():
    mlp = MlpSpec(layer_sizes=(4, 3), dropout=0.1).build(9)
    assert mlp.in_features == 9 and mlp.output_dim == 3
