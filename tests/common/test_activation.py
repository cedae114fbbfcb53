"""Activation names used by MaskBlock configs."""

import pytest
import torch

from common.activation import activation_module


def test_activation_names():
    x = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(activation_module("relu")(x), torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(activation_module("gelu")(x), torch.nn.functional.gelu(x))
    torch.testing.assert_close(activation_module("silu")(x), x * torch.sigmoid(x))
    torch.testing.assert_close(activation_module("none")(x), x)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        activation_module("tanh")
