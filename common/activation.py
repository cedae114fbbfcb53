"""Activation functions by config name."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = ("relu", "gelu", "silu", "none")


def activation_module(name: str) -> nn.Module:
    """The activation named `name` ("relu", "gelu", "silu" or "none") as a module."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
