"""Initial weights of embedding tables: one rule for every table (small, large, history, position)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

# ("normal", std) or ("uniform", bound); None keeps the module's own default.
EmbeddingInit = tuple[str, float]

INIT_KINDS = ("normal", "uniform")


def embedding_initializer(init: EmbeddingInit | None, name: str) -> Callable[[torch.Tensor], object] | None:
    """The in-place initializer of `init` (also applied by torchrec to each shard of a sharded table); `name` is the
    table named in the error for an unknown kind."""
    if init is None:
        return None
    kind, value = init
    if kind == "uniform":
        return functools.partial(nn.init.uniform_, a=-value, b=value)
    if kind == "normal":
        return functools.partial(nn.init.normal_, mean=0.0, std=value)
    raise ValueError(f"embedding table {name!r}: init {kind!r} is not one of {', '.join(INIT_KINDS)}")


def init_embedding_(weight: torch.Tensor, init: EmbeddingInit | None, name: str) -> None:
    """Initialize `weight` in place by `init`; None leaves it as it is."""
    initializer = embedding_initializer(init, name)
    if initializer is not None:
        with torch.no_grad():
            initializer(weight)
