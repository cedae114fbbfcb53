"""core.perf: matmul shape recording, FLOP counts, the peak over shapes and backends, timing windows, memory."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from core import perf
from core.perf import MatmulShape


def test_shape_flops_and_names():
    assert MatmulShape(1, 4, 3, 5).flops == 2 * 4 * 3 * 5
    assert MatmulShape(2, 4, 3, 5).flops == 2 * 2 * 4 * 3 * 5
    assert str(MatmulShape(1, 4, 3, 5)) == "4x3x5" and str(MatmulShape(2, 4, 3, 5)) == "2x4x3x5"


def test_records_every_matmul_by_shape_and_dtype():
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    batched = torch.randn(2, 4, 3), torch.randn(2, 3, 6)

    def run():
        torch.mm(a, b)
        torch.mm(a, b)
        torch.addmm(torch.zeros(5), a, b)
        torch.bmm(*batched)
        torch.mm(a.bfloat16(), b.bfloat16())

    flops = perf.record_matmul_shapes(run)
    assert flops == {
        (MatmulShape(1, 4, 3, 5), torch.float32): 3 * 120,
        (MatmulShape(2, 4, 3, 6), torch.float32): 288,
        (MatmulShape(1, 4, 3, 5), torch.bfloat16): 120,
    }


def test_records_and_counts_a_linear_layer_forward_and_backward():
    layer = nn.Linear(3, 5)
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        layer(x).sum().backward()

    # forward [4,3]x[3,5], grad input [4,5]x[5,3], grad weight [5,4]x[4,3]: 120 FLOPs each
    assert perf.count_flops(step) == 3 * 120
    assert sum(perf.record_matmul_shapes(step).values()) == 3 * 120


def test_time_call_windows_warmup_and_limits():
    calls, windows = [], []
    timing = perf.time_call(lambda: calls.append(1), calls=3, warmup=2, min_repeats=4, max_repeats=4,
                            budget_seconds=100.0, on_window=lambda n: windows.append((n, len(calls))))
    assert len(calls) == 2 + 4 * 3
    assert windows == [(3, 5), (3, 8), (3, 11), (3, 14)]  # after each window, with its calls (not the warmup's)
    assert timing.repeats == 4 and timing.calls == 3
    assert 0 <= timing.best <= timing.median
    assert timing.rate(10.0) == pytest.approx(10.0 / timing.best)
    calls.clear()
    perf.time_call(lambda: calls.append(1), warmup=0, min_repeats=2, budget_seconds=0.0)
    assert len(calls) == 2  # the budget is spent: only the minimum
    with pytest.raises(ValueError):
        perf.time_call(lambda: None, min_repeats=3, max_repeats=2)


def test_time_call_keeps_the_fastest_window():
    import time

    delays = iter([0.0, 0.05, 0.001, 0.05])  # warmup, then three windows

    def fn():
        time.sleep(next(delays))

    timing = perf.time_call(fn, warmup=1, min_repeats=3, max_repeats=3)
    assert 0.001 <= timing.best < 0.04 and timing.median >= 0.05


def test_matmul_gflops_measures_each_backend():
    shape = MatmulShape(1, 64, 32, 16)
    for backend in perf.BACKENDS:
        assert perf.matmul_gflops(shape, torch.float32, budget_seconds=0.0, backend=backend) > 0
    assert perf.matmul_gflops(MatmulShape(2, 8, 8, 8), torch.float32, 0.0) > 0
    with pytest.raises(ValueError, match="unknown matmul backend"):
        perf.matmul_gflops(shape, torch.float32, 0.0, backend="cublas")


def test_peak_is_the_best_shape_and_backend(monkeypatch):
    speeds = {("aten", 10): 100.0, ("onednn", 10): 300.0, ("aten", 20): 200.0, ("onednn", 20): 150.0}
    monkeypatch.setattr(perf, "matmul_gflops", lambda s, dtype, budget, backend: speeds[(backend, s.m)])
    small, large = MatmulShape(1, 10, 2, 2), MatmulShape(1, 20, 2, 2)
    peak = perf.matmul_peak([small, large, small], torch.float32, backends=("aten", "onednn"))
    assert peak.gflops == 300.0 and peak.best_shape == small and peak.best_backend == "onednn"
    assert peak.per_shape == {small: 300.0, large: 200.0}
    assert peak.per_backend == {"aten": 200.0, "onednn": 300.0}
    # 3 GFLOP at 300 GFLOP/s (10 ms) and 2 GFLOP at 200 GFLOP/s (10 ms): 5 GFLOP in 20 ms
    assert peak.weighted_gflops({small: 3e9, large: 2e9}) == pytest.approx(250.0)
    with pytest.raises(ValueError, match="at least one shape"):
        perf.matmul_peak([], torch.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_resident_memory_and_its_peak():
    assert perf.rss_bytes() > 0
    assert perf.peak_rss_bytes() >= perf.rss_bytes() - 2**20
    with perf.peak_rss_window() as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert mem["reset"] == 1
    assert mem["peak_rss"] >= perf.rss_bytes() + 48 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_child_processes_and_their_memory():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in perf.child_pids()
        assert perf.peak_rss_bytes(child.pid) > 0 and perf.rss_bytes(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    assert child.pid not in perf.child_pids()


def test_load_average_is_three_numbers():
    load = perf.load_average()
    assert len(load) == 3 and all(x >= 0 for x in load)
