"""torch.compile of a model's parts, in place, with compile counts and times for logs, tests and benchmarks.

A module is compiled in place (nn.Module.compile): its parameters, buffers, hooks and state_dict keys stay exactly
as they were, so checkpoints move freely between compiled and eager runs (no `_orig_mod.` prefixes) and wrappers
built around it (DistributedModelParallel, DDP) see the same module. Only the parts handed to `compile_module` are
compiled: a caller keeps what torch.compile should not trace (torchrec's sharded lookups) outside.

Shapes: torch.compile first specializes on the shapes it sees; when a dimension changes (the batch size of a last,
partial batch) it recompiles once with that dimension dynamic, and every later size reuses that graph. Switching
between training and evaluation (train/eval mode, gradients on/off, autocast on/off) compiles one graph for each
combination met. A batch of one row is always specialized (a graph of its own).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from core.log import get_logger

__all__ = ["CompileClock", "compile_function", "compile_module", "compile_options", "graph_breaks", "graphs_built",
           "is_compiled"]

logger = get_logger(__name__)


def compile_options(mode: str, backend: str = "inductor", cpp_wrapper: bool = False) -> dict[str, Any]:
    """torch.compile's keyword arguments for a CompileConfig mode and backend ("default" and "inductor" are
    torch's own defaults); cpp_wrapper: inductor calls its kernels from generated C++ rather than Python (the mode's
    own inductor options kept: torch.compile takes a mode or options, not both)."""
    options: dict[str, Any] = {} if mode == "default" else {"mode": mode}
    if backend != "inductor":
        options["backend"] = backend
    if cpp_wrapper:
        if backend != "inductor":
            raise ValueError(f"cpp_wrapper is an inductor option; backend {backend} has no generated code")
        from torch._inductor import list_mode_options

        options = {"options": {**list_mode_options(mode), "cpp_wrapper": True}}
    return options


def compile_module(module: nn.Module, mode: str = "default", backend: str = "inductor",
                   cpp_wrapper: bool = False) -> nn.Module:
    """Compile `module`'s calls in place (its state_dict keys and parameters unchanged); returns it."""
    module.compile(**compile_options(mode, backend, cpp_wrapper))
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether `module`'s calls run compiled (compile_module, i.e. nn.Module.compile, on it)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_function(fn: Callable[..., Any], mode: str = "default", backend: str = "inductor",
                     cpp_wrapper: bool = False) -> Callable[..., Any]:
    """`fn` compiled with torch.compile in the given mode and backend."""
    return torch.compile(fn, **compile_options(mode, backend, cpp_wrapper))


def graphs_built() -> int:
    """Graphs torch.compile has built in this process (each compilation and each recompilation counts one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    """Graph breaks torch.compile has met in this process (0 when every compiled call is one whole graph)."""
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


class CompileClock:
    """Times the calls during which torch.compile built graphs and logs them: what compiling cost, and when a
    recompilation happened (a new batch size, evaluation after training). Cheap enough to wrap every step: it reads
    two counters when nothing was compiled."""

    def __init__(self) -> None:
        self.seconds = 0.0  # wall time of the calls that compiled, summed
        self.graphs = 0  # graphs built during those calls

    @contextlib.contextmanager
    def measure(self, what: str) -> Iterator[None]:
        """Around one call (a training step, an evaluation batch): logs it when it compiled graphs."""
        before = graphs_built()
        start = time.perf_counter()
        try:
            yield
        finally:
            built = graphs_built() - before
            if built:
                seconds = time.perf_counter() - start
                self.seconds += seconds
                self.graphs += built
                logger.info("torch.compile: %s built %d graph(s) in %.1f s (%d graph(s), %.1f s of compiling so "
                            "far; graph breaks %d)", what, built, seconds, self.graphs, self.seconds, graph_breaks())
