"""`recap benchmark`'s eager-vs-compiled figures: the same in-memory training step (TrainLoop's, on the sharded model)
with the dense model eager or compiled (training.compile dense+loss), and with the task towers grouped or run one by
one (model/grouped_towers.py), side by side in one process against the same matmul peak.

The model is switched in place between variants: towers grouped or not (DenseRankingModel.group_towers), compiled or
not (model/compiled.py); it is left eager and grouped afterwards. Every variant's FLOPs are the eager model's count
(the variants compute the same maths), so examples/s and MFU rank them alike.
"""

from __future__ import annotations

from typing import Any

import torch

from core.compile import CompileClock, graph_breaks
from core.train_config import CompileConfig
from projects.home.recap.model.compiled import compile_model, uncompile_model
from projects.home.recap.model.multi_task import DenseRankingModel

# (label, compile target, towers grouped); "eager" is the main table's training figure (the default model).
VARIANTS = (
    ("eager, towers one by one", "off", False),
    ("compiled, towers one by one", "dense+loss", False),
    ("compiled", "dense+loss", True),
)


def _dense(model: Any) -> DenseRankingModel:
    return next(m for m in model.modules() if isinstance(m, DenseRankingModel))


def compile_figures(bench: Any, precision: str, flops_per_batch: int, peak_gflops: float,
                    eager: dict[str, Any]) -> dict[str, Any]:
    """{variant: training figures + mfu (+ compile_seconds)} for one precision; `bench` is a ConfigBenchmark and
    `eager` its training figures of the default (eager, grouped where the towers allow) model."""
    dense = _dense(bench.model)
    groupable = dense.group_towers
    out: dict[str, Any] = {"eager": {**eager, "towers_grouped": groupable}}
    try:
        for label, target, grouped in VARIANTS:
            if grouped and not groupable:
                continue  # the towers cannot be grouped: "towers one by one" is the figure
            dense.group_towers = grouped and groupable
            # Each variant compiles from scratch (the compile time is its own), and one process measuring several
            # configs and variants stays under torch.compile's per-function recompile limit.
            torch._dynamo.reset()
            compile_model(bench.model, CompileConfig(target=target))
            clock = CompileClock()
            with clock.measure(f"{bench.name} {precision} {label}"):
                figures = bench.train(precision, flops_per_batch)
            figures["mfu"] = figures["gflops_per_second"] / peak_gflops
            figures["towers_grouped"] = dense.group_towers
            if target != "off":
                # The first steps compile (timed inside the clock's window with the measured steps).
                figures["compile_seconds_upper_bound"] = clock.seconds
                figures["graph_breaks"] = graph_breaks()
            out[label] = figures
            uncompile_model(bench.model)
    finally:
        uncompile_model(bench.model)
        dense.group_towers = groupable
    base = out["eager"]["examples_per_second"]
    for figures in out.values():
        figures["vs_eager"] = figures["examples_per_second"] / base
    return out


def format_compile_table(doc: dict[str, Any]) -> list[str]:
    """The variants side by side: examples/s, MFU and the ratio to eager, per config and precision."""
    rows = [(name, p, variants) for name, r in doc["configs"].items() for p, variants in r.get("compile", {}).items()]
    if not rows:
        return []
    header = f"{'config':<12} {'prec':<5} {'variant':<28} {'train ex/s':>11} {'MFU':>6} {'vs eager':>9} {'compile s':>10}"
    lines = ["eager vs compiled (training.compile dense+loss) and task towers grouped or one by one:", header,
             "-" * len(header)]
    for name, precision, variants in rows:
        for label, f in variants.items():
            compile_s = f"{f['compile_seconds_upper_bound']:.0f}" if "compile_seconds_upper_bound" in f else "-"
            lines.append(f"{name:<12} {precision:<5} {label:<28} {f['examples_per_second']:>11,.0f} "
                         f"{f['mfu']:>6.1%} {f['vs_eager']:>8.2f}x {compile_s:>10}")
    lines.append("compile s: wall time of the training calls that compiled (their steps included: an upper bound).")
    lines.append("")
    return lines
