"""GPU timing with CUDA events, and the device's measured matmul peak (the denominator of MFU on a GPU).

core/perf.py measures CPU matmuls with wall clocks; on a GPU, kernels run asynchronously, so a window is timed
between two CUDA events and the best of several windows is kept (as perf.time_call does on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# Big enough to be compute bound on any current GPU, small enough to take milliseconds (bf16 on an H200: ~2 ms).
PEAK_SIZE = 8192
# matmul precision -> (operand dtype, torch.set_float32_matmul_precision value).
PRECISIONS = {"fp32": (torch.float32, "highest"), "tf32": (torch.float32, "high"), "bf16": (torch.bfloat16, "highest")}


@contextlib.contextmanager
def float32_matmul_precision(value: str) -> Iterator[None]:
    """torch.set_float32_matmul_precision for the duration ("highest": fp32, "high": tf32 on tensor cores)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def cuda_seconds(fn: Callable[[], object], calls: int, windows: int = 3, warmup: int = 2) -> float:
    """Seconds per call of fn on the current CUDA device: the best of `windows` windows of `calls` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(windows):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / calls)
    return best


def matmul_tflops(precision: str, size: int = PEAK_SIZE, device: str = "cuda") -> float:
    """Best TFLOP/s of a [size, size] @ [size, size] matmul in `precision` (fp32, tf32 or bf16)."""
    dtype, matmul_precision = PRECISIONS[precision]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    out = torch.empty(size, size, device=device, dtype=dtype)
    with float32_matmul_precision(matmul_precision):
        seconds = cuda_seconds(lambda: torch.mm(a, b, out=out), calls=10)
    return 2 * size**3 / seconds / 1e12


def matmul_peak_stage(out: Path) -> dict[str, Any]:
    """The measured peak TFLOP/s in fp32, tf32 and bf16 on cuda:0."""
    peaks = {p: round(matmul_tflops(p), 1) for p in PRECISIONS}
    headline = ", ".join(f"{p} {v:.1f}" for p, v in peaks.items()) + f" TFLOP/s ({PEAK_SIZE}^3 matmul)"
    return {"headline": headline, "results": {"tflops": peaks, "size": PEAK_SIZE}}
