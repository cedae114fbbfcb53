"""Performance measurement: the matmul shapes a step runs and the machine's peak on them, FLOP counts, timing that
resists a shared machine's noise, and resident memory.

MFU here is achieved FLOP/s (FLOPs counted by torch.utils.flop_counter) over the best FLOP/s the machine reaches
on the model's own matmul shapes in the same precision: a measured, not a datasheet, peak.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BACKENDS",
    "MatmulPeak",
    "MatmulShape",
    "Timing",
    "child_pids",
    "count_flops",
    "load_average",
    "matmul_gflops",
    "matmul_peak",
    "peak_rss_bytes",
    "peak_rss_window",
    "record_matmul_shapes",
    "reset_peak_rss",
    "rss_bytes",
    "time_call",
]


@dataclass(frozen=True, order=True)
class MatmulShape:
    """batch x ([m, k] @ [k, n]); batch is 1 for mm/addmm."""

    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n

    def __str__(self) -> str:
        prefix = f"{self.batch}x" if self.batch != 1 else ""
        return f"{prefix}{self.m}x{self.k}x{self.n}"


_aten = torch.ops.aten
_MATMULS = {
    _aten.mm.default: lambda a, b: (1, a.shape[0], a.shape[1], b.shape[1]),
    _aten.addmm.default: lambda bias, a, b, *_: (1, a.shape[0], a.shape[1], b.shape[1]),
    _aten.bmm.default: lambda a, b: (a.shape[0], a.shape[1], a.shape[2], b.shape[2]),
    _aten.baddbmm.default: lambda bias, a, b, *_: (a.shape[0], a.shape[1], a.shape[2], b.shape[2]),
}
_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available():
    # oneDNN's linear primitive: x [..., k] times weight [n, k]^T.
    _MATMULS[_ONEDNN_LINEAR.default] = lambda x, w, *_: (1, x.numel() // x.shape[-1], x.shape[-1], w.shape[0])
    BACKENDS: tuple[str, ...] = ("aten", "onednn")
else:
    BACKENDS = ("aten",)


class _MatmulRecorder(TorchDispatchMode):
    """Sums the FLOPs of every matmul dispatched, by shape and dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[tuple[MatmulShape, torch.dtype], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shape_of = _MATMULS.get(func)
        if shape_of is not None:
            shape = MatmulShape(*shape_of(*args))
            dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2)
            key = (shape, dtype)
            self.flops[key] = self.flops.get(key, 0) + shape.flops
        return func(*args, **(kwargs or {}))


def record_matmul_shapes(fn: Callable[[], object]) -> dict[tuple[MatmulShape, torch.dtype], int]:
    """Run fn once; return {(shape, dtype): FLOPs spent in that shape} of every matmul it ran (mm, addmm, bmm,
    baddbmm and oneDNN's linear primitive: what linear layers reach on the CPU, forward and backward)."""
    recorder = _MatmulRecorder()
    with recorder:
        fn()
    return recorder.flops


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn, as torch.utils.flop_counter counts them (matmuls and convolutions; a multiply-add
    is 2 FLOPs; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the best repeat (the machine's capability when other work leaves it alone) and the
    median (what a typical stretch got); `repeats` windows of `calls` calls each were timed."""

    best: float
    median: float
    repeats: int
    calls: int

    def rate(self, units_per_call: float) -> float:
        """units per second at the best repeat."""
        return units_per_call / self.best


def time_call(
    fn: Callable[[], object],
    *,
    calls: int = 1,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 50,
    budget_seconds: float = 5.0,
    on_window: Callable[[int], object] | None = None,
) -> Timing:
    """Time fn in windows of `calls` calls after `warmup` calls: at least min_repeats windows, then more until
    budget_seconds of measuring has passed or max_repeats is reached. A shared machine only ever slows a window
    down, so the best window is the robust estimate and the median shows how noisy the run was. on_window, if
    given, is called with the window's number of calls after each window, outside its timing (a progress report)."""
    if calls < 1 or min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError("time_call needs calls >= 1 and 1 <= min_repeats <= max_repeats")
    for _ in range(warmup):
        fn()
    windows: list[float] = []
    start = time.perf_counter()
    while len(windows) < max_repeats and (
        len(windows) < min_repeats or time.perf_counter() - start < budget_seconds
    ):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        windows.append((time.perf_counter() - t0) / calls)
        if on_window is not None:
            on_window(calls)
    return Timing(min(windows), statistics.median(windows), len(windows), calls)


def matmul_gflops(
    shape: MatmulShape, dtype: torch.dtype, budget_seconds: float = 0.5, backend: str = "aten"
) -> float:
    """Best GFLOP/s of `shape` in `dtype` on this machine (random operands, best of repeated windows), through
    torch.mm/bmm ("aten": MKL or oneDNN, as PyTorch dispatches) or oneDNN's linear primitive ("onednn")."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown matmul backend {backend!r}; this build has {', '.join(BACKENDS)}")
    g = torch.Generator().manual_seed(0)
    if backend == "onednn":
        if shape.batch != 1:
            raise ValueError("the onednn backend measures unbatched shapes only")
        a = torch.randn(shape.m, shape.k, generator=g).to(dtype)
        w = torch.randn(shape.n, shape.k, generator=g).to(dtype)

        def fn() -> None:
            _ONEDNN_LINEAR(a, w, None, "none", [], "")
    elif shape.batch == 1:
        a = torch.randn(shape.m, shape.k, generator=g).to(dtype)
        b = torch.randn(shape.k, shape.n, generator=g).to(dtype)
        out = torch.empty(shape.m, shape.n, dtype=dtype)

        def fn() -> None:
            torch.mm(a, b, out=out)
    else:
        a = torch.randn(shape.batch, shape.m, shape.k, generator=g).to(dtype)
        b = torch.randn(shape.batch, shape.k, shape.n, generator=g).to(dtype)
        out = torch.empty(shape.batch, shape.m, shape.n, dtype=dtype)

        def fn() -> None:
            torch.bmm(a, b, out=out)

    # Windows of about 20 ms: short enough to find gaps between other processes' bursts.
    t0 = time.perf_counter()
    fn()
    single = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(0.02 / single))
    timing = time_call(fn, calls=calls, warmup=1, min_repeats=3, budget_seconds=budget_seconds)
    return shape.flops / timing.best / 1e9


@dataclass(frozen=True)
class MatmulPeak:
    """The best GFLOP/s over a set of matmul shapes in one dtype (each shape through every backend), each shape's
    best figure, and each backend's best."""

    dtype: torch.dtype
    gflops: float
    best_shape: MatmulShape
    best_backend: str
    per_shape: dict[MatmulShape, float]
    per_backend: dict[str, float]

    def weighted_gflops(self, flops: dict[MatmulShape, int]) -> float:
        """What a run spending flops[shape] in each shape would reach if every matmul ran at its measured speed."""
        total = sum(flops.values())
        seconds = sum(f / (self.per_shape[s] * 1e9) for s, f in flops.items())
        return total / seconds / 1e9 if seconds > 0 else 0.0


def matmul_peak(
    shapes: Iterable[MatmulShape], dtype: torch.dtype, budget_seconds: float = 0.5, backends: Iterable[str] = BACKENDS
) -> MatmulPeak:
    """Measure every shape in `dtype` through every backend (budget_seconds each) and keep the best as the peak."""
    per_shape: dict[MatmulShape, float] = {}
    per_backend: dict[str, float] = {}
    best: tuple[float, MatmulShape, str] | None = None
    for shape in sorted(set(shapes)):
        for backend in backends:
            if backend == "onednn" and shape.batch != 1:
                continue
            gflops = matmul_gflops(shape, dtype, budget_seconds, backend)
            per_shape[shape] = max(per_shape.get(shape, 0.0), gflops)
            per_backend[backend] = max(per_backend.get(backend, 0.0), gflops)
            if best is None or gflops > best[0]:
                best = (gflops, shape, backend)
    if best is None:
        raise ValueError("matmul_peak needs at least one shape")
    return MatmulPeak(dtype, best[0], best[1], best[2], per_shape, per_backend)


# --- memory ---------------------------------------------------------------------------------------------------------
def _status_kib(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process now (this one by default); 0 where /proc is unavailable."""
    kib = _status_kib(pid if pid is not None else "self", "VmRSS")
    return (kib or 0) * 1024


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak resident memory of a process (this one by default) since it started or since reset_peak_rss()."""
    kib = _status_kib(pid if pid is not None else "self", "VmHWM")
    if kib is None and pid is None:
        # getrusage reports KiB on Linux and bytes on macOS.
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if os.uname().sysname == "Darwin" else maxrss * 1024
    return (kib or 0) * 1024


def child_pids() -> list[int]:
    """Live child processes of this process (e.g. DataLoader workers); empty where /proc is unavailable."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


@contextlib.contextmanager
def peak_rss_window() -> Iterator[dict[str, int]]:
    """`with peak_rss_window() as mem:` -- afterwards mem["peak_rss"] holds this process's peak RSS within the block
    (or since start, where the high-water mark cannot be reset) and mem["reset"] whether it was reset."""
    mem = {"reset": int(reset_peak_rss())}
    try:
        yield mem
    finally:
        mem["peak_rss"] = peak_rss_bytes()


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (runnable processes), (0, 0, 0) where unavailable."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
