"""The benchmarks' shared timing and reporting helpers, on a clock the test moves: windows sized to a length,
variants timed in turns, rates, MFU, matmul shapes, the JSON output."""

from __future__ import annotations

import json
import time

import pytest
import torch

from core import perf
from core.progress import Progress
from projects.home.recap.benchmarks.reporting import mb, ruled, write_figures
from projects.home.recap.benchmarks.timing import (
    calls_per_window,
    counter,
    gflops_per_second,
    interleaved_timing,
    matmul_shapes,
    mfu,
    rates,
    timing_json,
)


@pytest.fixture
def clock(monkeypatch):
    """A perf_counter that only the steps move: clock.step(seconds) is a call that takes that long, and records
    itself in clock.calls."""

    class Clock:
        now = 0.0
        calls: list[str] = []

        def step(self, name: str, seconds: float):
            def call() -> None:
                self.calls.append(name)
                self.now += seconds

            return call

    c = Clock()
    monkeypatch.setattr(time, "perf_counter", lambda: c.now)
    return c


def test_calls_per_window_fills_the_window_after_the_warmup(clock):
    step = clock.step("a", 0.25)
    assert calls_per_window(step, 2.0) == 8 and clock.calls == ["a", "a"]  # one warmup, one timed call
    assert calls_per_window(step, 2.0, warmup=0) == 8 and len(clock.calls) == 3
    assert calls_per_window(step, 0.0) == 1  # at least one call


def test_interleaved_timing_takes_turns_window_by_window_and_counts_the_rows(clock):
    steps = {"a": clock.step("a", 1.0), "b": clock.step("b", 2.0)}
    progress = Progress("test", enabled=True, seconds=3600)
    # A round: 2 calls of a (2 s), 1 of b (2 s); the budget 2 x 6 s is spent after 3 rounds.
    timings = interleaved_timing(steps, 6.0, calls={"a": 2, "b": 1}, warmup=1, min_rounds=1, progress=progress,
                                 rows={"a": 10, "b": 100})
    assert "".join(clock.calls) == "ab" + "aab" * 3
    assert timings["a"] == perf.Timing(1.0, 1.0, 3, 2) and timings["b"] == perf.Timing(2.0, 2.0, 3, 1)
    assert progress.done == 3 * (2 * 10 + 100)
    clock.calls.clear()
    timings = interleaved_timing(steps, 0.0, min_rounds=4)  # the budget spent: the minimum rounds, one call each
    assert "".join(clock.calls) == "ab" * 4 and timings["b"].repeats == 4 and timings["b"].calls == 1


def test_time_call_reports_each_window_to_a_counter():
    progress = Progress("test", enabled=True, seconds=3600)
    perf.time_call(lambda: None, calls=3, warmup=2, min_repeats=2, max_repeats=2, on_window=counter(progress, 5))
    assert progress.done == 2 * 3 * 5  # the windows' calls, not the warmup's
    assert counter(None, 5) is None


def test_rates_flop_rates_and_the_timing_document():
    timing = perf.Timing(best=0.5, median=1.0, repeats=4, calls=2)
    assert rates(100, timing) == {"examples_per_second": 200.0, "median_examples_per_second": 100.0}
    assert list(rates(100, timing, "rows")) == ["rows_per_second", "median_rows_per_second"]
    assert gflops_per_second(2e9, 0.5) == 4.0 and mfu(2e9, 0.5, peak_gflops=8.0) == 0.5
    assert timing_json(timing) == {"best_seconds": 0.5, "median_seconds": 1.0, "windows": 4, "calls_per_window": 2}


def test_matmul_shapes_adds_the_flops_of_one_shape_over_dtypes():
    a, b = torch.randn(4, 3), torch.randn(3, 5)

    def fn() -> None:
        a @ b
        a.bfloat16() @ b.bfloat16()
        a @ torch.randn(3, 7)

    shapes = matmul_shapes(fn)
    assert shapes == {perf.MatmulShape(1, 4, 3, 5): 2 * (2 * 4 * 3 * 5), perf.MatmulShape(1, 4, 3, 7): 2 * 4 * 3 * 7}
    assert sum(shapes.values()) == perf.count_flops(fn)


def test_tables_and_the_json_document(tmp_path, capsys):
    assert ruled("a  b") == ["a  b", "----"] and mb(3 * 2**20) == "3" and mb(1234 * 2**20) == "1,234"
    path = write_figures({"x": [1, 2]}, tmp_path / "new" / "figures.json", "figures:")
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("]\n}\n")
    assert capsys.readouterr().out == f"figures: {tmp_path / 'new' / 'figures.json'}\n"
