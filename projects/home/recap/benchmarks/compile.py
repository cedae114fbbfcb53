"""`recap benchmark`'s eager-vs-compiled figures: the same in-memory training step (TrainLoop's, on the sharded model)
with the dense model eager or compiled (training.compile dense+loss), and with the task towers grouped or run one by
one (model/grouped_towers.py), side by side in one process against the same matmul peak.

The model is switched in place between variants: towers grouped or not (DenseRankingModel.group_towers), compiled or
not (model/compiled.py); it is left as the config built it afterwards. Every variant's FLOPs are the eager model's count
(the variants compute the same maths), so examples/s and MFU rank them alike.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from core import perf
from core.compile import CompileClock, compile_module, graph_breaks, is_compiled
from core.log import setup_logging
from core.progress import Progress
from core.train_config import CompileConfig
from projects.home.recap.benchmarks.config_benchmark import ConfigBenchmark, dense_model
from projects.home.recap.benchmarks.reporting import quiet_logging, ruled
from projects.home.recap.benchmarks.timing import (
    calls_per_window,
    gflops_per_second,
    interleaved_timing,
    matmul_shapes,
    mfu,
    rates,
)
from projects.home.recap.model.compiled import compile_model, uncompile_model

# (label, compile target, towers grouped); "eager" is the main table's training figure (the config's model, its
# towers as model.group_towers runs them in that precision); the eager variant that repeats it is left out.
VARIANTS = (
    ("eager, towers one by one", "off", False),
    ("eager, towers grouped", "off", True),
    ("compiled", "dense+loss", False),
    ("compiled, towers grouped", "dense+loss", True),
)


def compile_figures(bench: ConfigBenchmark, precision: str, flops_per_batch: int, peak_gflops: float,
                    eager: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """{variant: training figures + mfu (+ compile_seconds)} for one precision; `eager` is bench's training figures
    of the config's (eager) model. The rows every variant trains on are counted on `progress`."""
    dense = dense_model(bench.model)
    configured = dense.group_towers, dense.group_towers_in_bf16
    groupable = dense._tower_plan is not None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        eager_grouped = dense.towers_grouped(torch.empty(0))  # how the config's eager model ran its towers
    out: dict[str, Any] = {"eager": {**eager, "towers_grouped": eager_grouped}}
    try:
        for label, target, grouped in VARIANTS:
            if (grouped and not groupable) or (target == "off" and grouped == eager_grouped):
                continue  # the towers cannot be grouped, or the config's eager model was this variant
            # Each variant compiles from scratch (the compile time is its own), and one process measuring several
            # configs and variants stays under torch.compile's per-function recompile limit.
            torch._dynamo.reset()
            compile_model(bench.model, CompileConfig(
                target=target, backend=bench.settings.compile_backend if target != "off" else "inductor"))
            dense.group_towers, dense.group_towers_in_bf16 = grouped and groupable, False
            clock = CompileClock()
            with clock.measure(f"{bench.name} {precision} {label}"):
                figures = bench.train(precision, flops_per_batch, progress)
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
        dense.group_towers, dense.group_towers_in_bf16 = configured
    base = out["eager"]["examples_per_second"]
    for figures in out.values():
        figures["vs_eager"] = figures["examples_per_second"] / base
    return out


def format_compile_table(doc: dict[str, Any]) -> list[str]:
    """The variants side by side: examples/s, MFU and the ratio to eager, per config and precision."""
    rows = [(name, p, variants) for name, r in doc["configs"].items() for p, variants in r.get("compile", {}).items()]
    if not rows:
        return []
    header = f"{'config':<12} {'prec':<5} {'variant':<36} {'train ex/s':>11} {'MFU':>6} {'vs eager':>9} {'compile s':>10}"
    lines = ["eager vs compiled (training.compile dense+loss) and task towers grouped or one by one:", *ruled(header)]
    for name, precision, variants in rows:
        for label, f in variants.items():
            if label == "eager":
                label = f"eager, towers {'grouped' if f['towers_grouped'] else 'one by one'} (config)"
            compile_s = f"{f['compile_seconds_upper_bound']:.0f}" if "compile_seconds_upper_bound" in f else "-"
            lines.append(f"{name:<12} {precision:<5} {label:<36} {f['examples_per_second']:>11,.0f} "
                         f"{f['mfu']:>6.1%} {f['vs_eager']:>8.2f}x {compile_s:>10}")
    lines.append("compile s: wall time of the training calls that compiled (their steps included: an upper bound).")
    lines.append("")
    return lines


# --- the dense model alone: python -m projects.home.recap.benchmarks.compile --------------------------------------------
def _dense_trainer(config: Any, name: str, size: int, precision: str, compiled: bool, grouped: bool,
                   cpp_wrapper: bool = False) -> Any:
    """One variant of the dense model alone, built, compiled if asked (with inductor's C++ wrapper if asked) and
    warmed up (its first steps, which compile, are timed into trainer.compile_seconds); trainer.batches holds its two
    batches."""
    from projects.home.recap.gpu_check.dense import DenseTrainer, build_dense, dense_batch

    torch.manual_seed(0)
    model = build_dense(config)
    model.group_towers, model.group_towers_in_bf16 = grouped and model._tower_plan is not None, False
    trainer = DenseTrainer(config, model, "cpu", precision)
    trainer.batches = [dense_batch(config, model, size, "cpu", seed) for seed in range(2)]
    if compiled:
        compile_module(trainer.model, cpp_wrapper=cpp_wrapper)
    clock = CompileClock()
    with clock.measure(f"{name} {precision} {'compiled' if compiled else 'eager'}"):
        for batch in trainer.batches:
            trainer.step(batch)
    trainer.compile_seconds = clock.seconds
    return trainer


def _on_its_batches(trainer: Any) -> Callable[[], None]:
    """One call: one training step of trainer on its next batch (its batches in turn)."""
    batches = itertools.cycle(trainer.batches)
    return lambda: trainer.step(next(batches))


def _interleaved_steps(trainers: dict[str, Any], seconds: float, rows_per_step: int, progress: Progress | None,
                       window: float = 0.5) -> dict[str, perf.Timing]:
    """Seconds per training step of each trainer (on its batches in turn) in windows of about `window` s, taken in
    turns until `seconds` per trainer have passed: a load that comes and goes on a shared machine slows every
    variant alike."""
    steps = {label: _on_its_batches(trainer) for label, trainer in trainers.items()}
    calls = {label: calls_per_window(step, window, warmup=0) for label, step in steps.items()}
    return interleaved_timing(steps, seconds, calls=calls, progress=progress,
                              rows=dict.fromkeys(trainers, rows_per_step))


def profile_table(trainer: Any, steps: int = 20, rows: int = 15) -> str:
    """torch.profiler's table of `steps` training steps of `trainer`, the top `rows` operators by their own CPU time:
    where a step's time goes once the variant runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            trainer.step(trainer.batches[i % len(trainer.batches)])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def dense_step_figures(config_name: str, precisions: tuple[str, ...], seconds: float, batch_size: int | None = None,
                       variants: tuple[str, ...] = ("eager", "compiled"), profile: bool = False) -> dict[str, Any]:
    """The dense model alone (gpu_check/dense.py: no sparse lookup, the pooled tables a random input), one training
    step (forward, loss, backward, clipping, Adam) per call: examples/s and MFU of each of eager / compiled x towers
    grouped / one by one, best of ~0.5 s windows taken in turns, against the best matmul peak over the variants' own
    shapes. FLOPs are the eager model's (every variant computes the same maths). The rows trained in the timed
    windows are counted on a progress report per precision."""
    from projects.home.recap.gpu_check.dense import load_config

    config = load_config(config_name)
    size = batch_size or config.data.batch_size
    out: dict[str, Any] = {"config": config_name, "batch_size": size, "precisions": {}}
    for precision in precisions:
        torch._dynamo.reset()
        trainers: dict[str, Any] = {}
        for variant in variants:
            # The C++ wrapper: towers one by one only (compiled, they do better than grouped).
            for grouped in (False, True) if variant != "compiled, C++ wrapper" else (False,):
                trainer = _dense_trainer(config, config_name, size, precision, variant != "eager", grouped,
                                         cpp_wrapper=variant == "compiled, C++ wrapper")
                trainers[f"{variant}, towers {'grouped' if trainer.model.group_towers else 'one by one'}"] = trainer
        first = next(iter(trainers.values()))  # eager (or the first variant): the model's own FLOPs and shapes

        def step(trainer: Any = first) -> None:
            trainer.forward_backward(trainer.batches[0])

        flops = perf.count_flops(step)
        shapes: Counter[perf.MatmulShape] = Counter()
        for trainer in trainers.values():
            if not is_compiled(trainer.model):  # the shapes each layout runs
                shapes.update(matmul_shapes(lambda t=trainer: step(t)))
            trainer.optimizer.zero_grad(set_to_none=True)
        with Progress(f"{config_name} dense model, {precision}") as progress:
            timings = _interleaved_steps(trainers, seconds, size, progress)
        peak = perf.matmul_peak(shapes, {"fp32": torch.float32, "bf16": torch.bfloat16}[precision], 0.3)
        rows: dict[str, Any] = {}
        for label, trainer in trainers.items():
            timing = timings[label]
            rows[label] = {**rates(size, timing), "windows": timing.repeats,
                           "gflops_per_second": gflops_per_second(flops, timing.best),
                           "mfu": mfu(flops, timing.best, peak.gflops), "compile_seconds": trainer.compile_seconds}
        out["precisions"][precision] = {"flops_per_example": flops / size, "peak_gflops_per_second": peak.gflops,
                                        "peak_shape": str(peak.best_shape), "variants": rows}
        if profile:  # the last variant: compiled with grouped towers (eager with --eager-only)
            out.setdefault("profiles", {})[precision] = profile_table(trainer)
    return out


def format_dense_table(doc: dict[str, Any]) -> str:
    lines = [f"{doc['config']} dense model alone, batch {doc['batch_size']}, one training step (forward, loss, "
             "backward, clipping, Adam):",
             f"{'prec':<5} {'variant':<42} {'ex/s':>9} {'GF/s':>6} {'MFU':>6} {'compile s':>10}"]
    for precision, p in doc["precisions"].items():
        for label, r in p["variants"].items():
            lines.append(f"{precision:<5} {label:<42} {r['examples_per_second']:>9,.0f} {r['gflops_per_second']:>6.1f} "
                         f"{r['mfu']:>6.1%} {r['compile_seconds']:>10.0f}")
        lines.append(f"{precision:<5} peak {p['peak_gflops_per_second']:.0f} GF/s ({p['peak_shape']}), "
                     f"{p['flops_per_example'] / 1e6:.2f} MFLOP per example")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="the dense model alone: eager vs compiled, towers grouped or not")
    parser.add_argument("--config", default="demo", help="a config name under projects/home/recap/config")
    parser.add_argument("--precision", dest="precisions", action="append", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring budget per variant")
    parser.add_argument("--eager-only", action="store_true")
    parser.add_argument("--cpp-wrapper", action="store_true",
                        help="also compiled with inductor's C++ wrapper (training.compile.cpp_wrapper)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of the last variant (compiled, towers grouped)")
    parser.add_argument("--output", help="JSON file for the figures")
    args = parser.parse_args(argv)
    # fbgemm logs while loading (imported above, through torchrec), which gives the root logger a handler of
    # logging.basicConfig's: one handler, ours, for the progress lines.
    logging.getLogger().handlers.clear()
    setup_logging(force=True)
    quiet_logging()
    doc = dense_step_figures(args.config, tuple(args.precisions or ("fp32", "bf16")), args.seconds, args.batch_size,
                             ("eager",) if args.eager_only else
                             ("eager", "compiled", *(("compiled, C++ wrapper",) if args.cpp_wrapper else ())),
                             args.profile)
    print(format_dense_table(doc))
    for precision, table in doc.get("profiles", {}).items():
        print(f"\n{precision}: where the last variant's step time goes\n{table}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
