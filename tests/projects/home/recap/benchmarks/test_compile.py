"""The eager-vs-compiled figures: in `recap benchmark --compile` and for the dense model alone (no speed assertions)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from projects.home.recap.benchmarks.compile import dense_step_figures, format_dense_table

ROOT = Path(__file__).resolve().parents[5]


def test_dense_benchmark_reports_each_variant_with_its_mfu(progress_lines):
    doc = dense_step_figures("demo", ("fp32",), seconds=0.05, batch_size=64, variants=("eager",), profile=True)
    # The rows trained in the timed windows, the two variants taking turns (at least 3 windows each), as they go.
    lines = [line for line in progress_lines() if line.startswith("demo dense model, fp32: ")]
    assert len(lines) >= 6 and re.fullmatch(r"demo dense model, fp32: [\d,]+ rows in \d+:\d\d, [\d,]+ rows/s", lines[-1])
    figures = doc["precisions"]["fp32"]
    assert set(figures["variants"]) == {"eager, towers one by one", "eager, towers grouped"}
    for row in figures["variants"].values():
        assert row["examples_per_second"] > 0
        assert row["mfu"] == pytest.approx(row["gflops_per_second"] / figures["peak_gflops_per_second"])
        assert row["gflops_per_second"] == pytest.approx(
            row["examples_per_second"] * figures["flops_per_example"] / 1e9)
    assert "Self CPU time total" in doc["profiles"]["fp32"]
    assert "eager, towers grouped" in format_dense_table(doc)


@pytest.mark.slow
def test_quick_benchmark_with_compile_reports_eager_and_compiled_side_by_side(tmp_path):
    output = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "projects.home.recap.main", "benchmark", "--quick", "--compile", "--compile-backend", "aot_eager",
         "--torchrun", "0",
         "--precision", "fp32", "--set", "model.backbone={mlp_config: {layer_sizes: [16]}}", "--output", str(output)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eager vs compiled" in proc.stdout
    variants = json.loads(output.read_text())["configs"]["demo"]["compile"]["fp32"]
    assert set(variants) == {"eager", "eager, towers grouped", "compiled", "compiled, towers grouped"}
    assert variants["eager"]["vs_eager"] == 1.0 and not variants["eager"]["towers_grouped"]
    assert variants["compiled"]["graph_breaks"] == 0 and variants["compiled"]["compile_seconds_upper_bound"] > 0
    assert not variants["compiled"]["towers_grouped"] and variants["compiled, towers grouped"]["towers_grouped"]
