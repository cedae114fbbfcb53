"""How the benchmarks time things: windows of calls sized to a target length, variants timed in turns, the best and
the median window, rates, FLOP rates and MFU, and the rows a timed loop has done counted on a progress report.

A shared machine only ever slows a window down: the best window is the figure, the median shows how noisy the run
was. Variants that are compared are timed in turns, window by window, so that a burst of other work slows them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from core import perf
from core.progress import Progress

__all__ = ["calls_per_window", "counter", "gflops_per_second", "interleaved_timing", "matmul_shapes", "mfu",
           "rates", "timing_json"]

K = TypeVar("K")


def calls_per_window(step: Callable[[], object], window_seconds: float, warmup: int = 1) -> int:
    """How many calls of step fill a window of about window_seconds: `warmup` untimed calls (the first allocates
    the optimizer's and the autograd's buffers), then one timed call."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    step()
    return max(1, round(window_seconds / max(time.perf_counter() - t0, 1e-6)))


def counter(progress: Progress | None, rows_per_call: int) -> Callable[[int], None] | None:
    """perf.time_call's on_window that counts rows_per_call rows per timed call on `progress` (None: no report)."""
    if progress is None:
        return None
    report = progress  # not None, for the closure
    return lambda calls: report.update(calls * rows_per_call)


def interleaved_timing(steps: Mapping[K, Callable[[], object]], seconds_each: float, *,
                       calls: int | Mapping[K, int] = 1, warmup: int = 0, min_rounds: int = 3,
                       progress: Progress | None = None, rows: Mapping[K, int] | None = None
                       ) -> dict[K, perf.Timing]:
    """Time each step in windows of `calls` calls (one number, or one per step), the steps taking turns window by
    window after `warmup` untimed calls each, until every step has had at least min_rounds windows and
    seconds_each x the number of steps have passed; the best and the median window of each. With `progress`, the
    rows of each window (rows[step] per call) are counted on it after the window, outside its timing."""
    per_step = {name: calls if isinstance(calls, int) else calls[name] for name in steps}
    for step in steps.values():
        for _ in range(warmup):
            step()
    windows: dict[K, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < seconds_each * len(steps):
        for name, step in steps.items():
            n = per_step[name]
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            windows[name].append((time.perf_counter() - t0) / n)
            if progress is not None and rows is not None:
                progress.update(n * rows[name])
        rounds += 1
    return {name: perf.Timing(min(w), statistics.median(w), len(w), per_step[name]) for name, w in windows.items()}


def rates(units_per_call: float, timing: perf.Timing, unit: str = "examples") -> dict[str, float]:
    """{UNIT_per_second, median_UNIT_per_second}: units_per_call at the best and at the median window."""
    return {f"{unit}_per_second": units_per_call / timing.best,
            f"median_{unit}_per_second": units_per_call / timing.median}


def timing_json(timing: perf.Timing) -> dict[str, float]:
    """A timing as the JSON documents hold it."""
    return {"best_seconds": timing.best, "median_seconds": timing.median, "windows": timing.repeats,
            "calls_per_window": timing.calls}


def gflops_per_second(flops_per_call: float, seconds_per_call: float) -> float:
    """Achieved GFLOP/s of a call that does flops_per_call FLOPs in seconds_per_call."""
    return flops_per_call / seconds_per_call / 1e9


def mfu(flops_per_call: float, seconds_per_call: float, peak_gflops: float) -> float:
    """Model FLOPs utilization: the achieved GFLOP/s over the machine's measured matmul peak."""
    return gflops_per_second(flops_per_call, seconds_per_call) / peak_gflops


def matmul_shapes(fn: Callable[[], object]) -> dict[perf.MatmulShape, int]:
    """The FLOPs one call of fn spends in each matmul shape (all dtypes together): the shapes its peak is
    measured on."""
    shapes: dict[perf.MatmulShape, int] = {}
    for (shape, _), flops in perf.record_matmul_shapes(fn).items():
        shapes[shape] = shapes.get(shape, 0) + flops
    return shapes
