"""`recap benchmark`: the recap ranker's throughput on this machine, measured against the machine's own matmul peak.

For each config (the demo and the recap-scale model by default), in one process:
  - matmul peak: the best GFLOP/s the machine reaches on the model's own matmul shapes (recorded from one training
    step) in fp32 and bf16, through PyTorch's matmul and through oneDNN;
  - training: the training loop's own step (TrainLoop: forward, loss, backward, gradient clipping, the dense Adam
    and the sparse optimizer fused into backward, on the DistributedModelParallel model) on batches already in
    memory, in fp32 and under bf16 autocast: examples/s, achieved GFLOP/s (forward+backward FLOPs counted by
    torch.utils.flop_counter) and MFU = achieved / peak;
  - optionally the same step compiled and with the task towers one by one (compile.py);
  - evaluation: the evaluator's per-batch work (eval-mode forward without gradients, metrics accumulation);
  - loader: rows/s of RecapDataLoader over a temporary parquet file with the config's schema, and over the same
    data in the prepared layout (`recap data prepare`);
  - pipeline: the same training step fed by that loader, against the in-memory step, in each precision; where
    the bare peer is measured, timed in turns with it (window by window) as the in-memory step is;
  - peak resident memory of the process in each phase and of the loader's worker;
  - optionally the same training step on 2 ranks under torchrun against 1 rank (multi_rank.py).
Timings keep the best of several short windows (a shared machine only ever slows a window down); the medians and
the load average are reported alongside. Each phase is logged as it starts; the phases that process rows report
them as they go (core.progress: a bar on a terminal, a line every RECAP_PROGRESS_SECONDS seconds otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from core import perf
from core.distributed import DistributedContext, init_distributed
from core.log import get_logger
from core.progress import Progress
from projects.home.recap.benchmarks.bare_peer import against_peer, peer_shape, peer_step
from projects.home.recap.benchmarks.compile import compile_figures, format_compile_table
from projects.home.recap.benchmarks.config_benchmark import (
    BenchmarkSettings,
    ConfigBenchmark,
    dense_model,
    dense_parameters,
)
from projects.home.recap.benchmarks.multi_rank import multi_rank
from projects.home.recap.benchmarks.reporting import machine_info, mb, ruled
from projects.home.recap.benchmarks.timing import calls_per_window
from projects.home.recap.schema import RecapConfig, load_recap_config

logger = get_logger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Phases:
    """Logs each phase as it starts, keeps the seconds it took and gives it a progress report of the rows it
    processes (a report that shows nothing for a phase that processes none)."""

    def __init__(self, name: str):
        self.name = name
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str, rows: bool = True) -> Iterator[Progress]:
        logger.info("%s: %s", self.name, phase)
        start = time.perf_counter()
        try:
            with Progress(f"{self.name}: {phase}", enabled=None if rows else False) as progress:
                yield progress
        finally:
            self.seconds[phase] = time.perf_counter() - start


def _pick_training_precision(results: dict[str, Any]) -> str:
    """The precision training runs fastest in: the loader has to keep up with that one."""
    train = results["train"]
    return max(train, key=lambda p: train[p]["examples_per_second"])


def _peak_shapes(shapes: dict[perf.MatmulShape, int], share: float) -> dict[perf.MatmulShape, int]:
    """The shapes that together hold all but `share` of the matmul FLOPs (tiny products never set the peak)."""
    total = sum(shapes.values())
    kept: dict[perf.MatmulShape, int] = {}
    for shape, flops in sorted(shapes.items(), key=lambda item: -item[1]):
        if kept and sum(kept.values()) >= (1.0 - share) * total:
            break
        kept[shape] = flops
    return kept


def benchmark_config(name: str, config: RecapConfig, settings: BenchmarkSettings, ctx: DistributedContext,
                     workdir: Path) -> dict[str, Any]:
    """Every figure of one config (see the module docstring)."""
    phase = Phases(name)
    with phase("build the sharded model and optimizers", rows=False):
        bench = ConfigBenchmark(name, config, settings, ctx, workdir)
    out: dict[str, Any] = {
        "config": name,
        "batch_size": bench.batch_size,
        "gradient_accumulation_steps": bench.accumulation,
        "eval_batch_size": bench.eval_batch_size,
        "input_features": dense_model(bench.model).input_width,
        "dense_parameters": dense_parameters(bench.model),
        "build_peak_rss_bytes": bench.build_peak_rss,
        "num_threads": torch.get_num_threads(),
        "dense_optimizer": {
            "class": type(bench.dense_optimizer.optimizer).__name__,
            "fused": bench.dense_optimizer.fused,
            "clip_grad_norm": config.training.clip_grad_norm,
        },
        "peak": {}, "flops_per_example": {}, "train": {}, "eval": {},
    }
    if settings.compile:
        out["compile"] = {}
    for precision in settings.precisions:
        with phase(f"{precision} matmul peak on the model's shapes", rows=False):
            flops, shapes = bench.flops_and_shapes(precision)
            measured = _peak_shapes(shapes, settings.peak_flops_share)
            peak = perf.matmul_peak(measured, _DTYPES[precision], settings.peak_seconds)
        out["flops_per_example"][precision] = flops / bench.batch_size
        out["peak"][precision] = {
            "gflops_per_second": peak.gflops,
            "best_shape": str(peak.best_shape),
            "best_backend": peak.best_backend,
            "per_backend": peak.per_backend,
            "model_weighted_gflops_per_second": peak.weighted_gflops(measured),
            "per_shape": {str(s): {"gflops_per_second": g, "model_gflop_per_step": measured[s] / 1e9}
                          for s, g in peak.per_shape.items()},
            "unmeasured_gflop_per_step": (sum(shapes.values()) - sum(measured.values())) / 1e9,
        }
        with phase(f"{precision} training") as progress:
            train = bench.train(precision, flops, progress)
        train["mfu"] = train["gflops_per_second"] / peak.gflops
        out["train"][precision] = train
        shape = peer_shape(config, out["input_features"]) if settings.bare_peer else None
        if shape is not None:
            with phase(f"{precision} training against the bare peer, in turns", rows=False):
                ours = bench.in_memory_step(precision)
                peer, _ = peer_step(shape, bench.batch_size, precision)
                calls = {"ours": calls_per_window(ours, settings.window_seconds),
                         "peer": calls_per_window(peer, settings.window_seconds)}
                out.setdefault("bare_peer", {})[precision] = against_peer(
                    ours, flops * bench.accumulation, bench.examples_per_step, shape, bench.batch_size, precision,
                    settings.train_seconds, calls, peak.gflops)
        if settings.compile:
            with phase(f"{precision} training compiled, towers grouped and one by one") as progress:
                out["compile"][precision] = compile_figures(bench, precision, flops, peak.gflops, train, progress)
        with phase(f"{precision} evaluation") as progress:
            out["eval"][precision] = bench.evaluate(precision, progress)
        out["eval"][precision]["vs_train"] = (out["eval"][precision]["examples_per_second"]
                                              / train["examples_per_second"])
    fastest = _pick_training_precision(out)
    with phase("write temporary parquet data", rows=False):
        data_config, rows = bench.write_data()
    with phase("loader") as progress:
        out["loader"] = bench.loader(data_config, progress)
    out["loader"]["rows_in_file"] = rows
    with phase("loader on the prepared layout") as progress:
        prepared = bench.loader(bench.prepare_data(data_config), progress)
    prepared["vs_parquet"] = prepared["rows_per_second"] / out["loader"]["rows_per_second"]
    out["loader"]["prepared"] = prepared
    out["loader"]["vs_train"] = {p: out["loader"]["rows_per_second"] / t["examples_per_second"]
                                 for p, t in out["train"].items()}
    # Every precision's pipeline; "pipeline" (the tables, the 2-rank run) is the fastest precision's.
    out["pipelines"] = {}
    for precision in out["train"]:
        in_memory = out.get("bare_peer", {}).get(precision)
        if in_memory is None:
            with phase(f"{precision} loader + training pipeline") as progress:
                pipeline = bench.pipeline(data_config, precision, progress)
        else:
            with phase(f"{precision} loader + training pipeline against the bare peer, in turns", rows=False):
                pipeline = _pipeline_against_peer(bench, data_config, precision, in_memory,
                                                  out["flops_per_example"][precision] * bench.batch_size,
                                                  out["peak"][precision]["gflops_per_second"])
        pipeline["precision"] = precision
        pipeline["vs_in_memory"] = pipeline["examples_per_second"] / out["train"][precision]["examples_per_second"]
        out["pipelines"][precision] = pipeline
    out["pipeline"] = out["pipelines"][fastest]
    out["phase_seconds"] = phase.seconds
    return out


def _pipeline_against_peer(bench: ConfigBenchmark, config: RecapConfig, precision: str, in_memory: dict[str, Any],
                           flops_per_batch: float, peak_gflops: float) -> dict[str, Any]:
    """The loader-fed training step timed in turns with the bare peer: each of our windows spans one shuffle-buffer
    fill (so each pays for one fill's reading), each of the peer's lasts about as long (sized from the in-memory
    turns). The process's peak resident memory is taken over the first fill, before the peer is built."""
    with bench.pipeline_step(config, precision) as (step, calls):
        with perf.peak_rss_window() as mem:
            for _ in range(calls):
                step()
        seconds = in_memory["ours"]["step"]["best_seconds"] / in_memory["peer"]["step"]["best_seconds"]
        turns = against_peer(step, flops_per_batch * bench.accumulation, bench.examples_per_step, in_memory["shape"],
                             bench.batch_size, precision, bench.settings.pipeline_seconds,
                             {"ours": calls, "peer": max(1, round(calls * seconds))}, peak_gflops, min_rounds=2)
    ours = turns["ours"]
    return {"examples_per_second": ours["examples_per_second"],
            "median_examples_per_second": ours["median_examples_per_second"], "step": ours["step"],
            "peak_rss_bytes": mem["peak_rss"], "bare_peer": turns["peer"], "vs_bare_peer": turns["ratio"]}


# --- the whole run ---------------------------------------------------------------------------------------------------
def run_benchmark(settings: BenchmarkSettings) -> dict[str, Any]:
    """Every figure for every config, as one JSON-ready document."""
    start = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(), "settings": _settings_json(settings), "configs": {}}
    ctx = init_distributed("cpu")
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-") as tmp:
        for name, path in settings.configs:
            overrides = settings.config_overrides()
            config = load_recap_config(path, overrides)
            workdir = Path(tmp) / name
            result = benchmark_config(name, config, settings, ctx, workdir)
            if settings.torchrun_nproc > 1:
                fastest = result["pipeline"]["precision"]
                logger.info("%s: %d ranks under torchrun", name, settings.torchrun_nproc)
                ranks = multi_rank(Path(path), tuple(overrides), settings.torchrun_nproc, fastest,
                                   settings.torchrun_steps, workdir)
                if "examples_per_second" in ranks:
                    ranks["vs_one_rank"] = ranks["examples_per_second"] / result["train"][fastest]["examples_per_second"]
                result["torchrun"] = ranks
            doc["configs"][name] = result
    doc["machine"]["load_average_end"] = list(perf.load_average())
    doc["seconds"] = time.perf_counter() - start
    return doc


def _settings_json(settings: BenchmarkSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d["configs"] = [[n, str(p)] for n, p in settings.configs]
    return d


def format_peer_table(doc: dict[str, Any]) -> list[str]:
    """Our training step against the bare peer (bare_peer.py), timed in turns; [] when none was measured."""
    rows = [(name, p, f) for name, r in doc["configs"].items() for p, f in r.get("bare_peer", {}).items()]
    if not rows:
        return []
    lines = ruled(f"{'config':<12} {'prec':<5} {'ours ex/s':>10} {'ours GF/s':>10} {'MFU':>6} {'peer ex/s':>10} "
                  f"{'peer GF/s':>10} {'MFU':>6} {'ours/peer':>10} {'pipeline/peer':>14}")
    for name, p, f in rows:
        pipe = doc["configs"][name].get("pipelines", {}).get(p, {})
        vs_pipe = f"{pipe['vs_bare_peer']:.2f}x" if "vs_bare_peer" in pipe else "-"
        o, q = f["ours"], f["peer"]
        lines.append(f"{name:<12} {p:<5} {o['examples_per_second']:>10,.0f} {o['gflops_per_second']:>10,.1f} "
                     f"{o['mfu']:>6.1%} {q['examples_per_second']:>10,.0f} {q['gflops_per_second']:>10,.1f} "
                     f"{q['mfu']:>6.1%} {f['ratio']:>9.2f}x {vs_pipe:>14}")
    lines.append("ours/peer: GFLOP/s of our whole training step (lookups, featurization, clipping, both optimizers) "
                 "over those of a bare plain-PyTorch loop of the same dense shape on one in-memory tensor with fused "
                 "Adam, timed in turns; pipeline/peer: the same with our loader feeding the step (windows of one "
                 "shuffle-buffer fill), also timed in turns with the peer.")
    lines.append("")
    return lines


# --- the table -------------------------------------------------------------------------------------------------------
def format_report(doc: dict[str, Any]) -> str:
    """The figures as text tables a person reads."""
    m = doc["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}; ISA {' '.join(m['cpu_flags']) or '?'}",
        f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in m['load_average'])}, "
        f"end {' '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}; figures are the best of short windows "
        "(medians in the JSON)",
        "",
    ]
    header = (f"{'config':<12} {'prec':<5} {'peak GF/s':>10} {'(shape, backend)':<24} {'train ex/s':>11} "
              f"{'GF/s':>7} {'MFU':>6} {'eval ex/s':>10} {'eval/train':>10} {'train RSS MB':>13}")
    lines += ruled(header)
    for name, r in doc["configs"].items():
        for p, t in r["train"].items():
            peak = r["peak"][p]
            ev = r["eval"][p]
            lines.append(
                f"{name:<12} {p:<5} {peak['gflops_per_second']:>10,.0f} "
                f"{peak['best_shape'] + ', ' + peak['best_backend']:<24} {t['examples_per_second']:>11,.0f} "
                f"{t['gflops_per_second']:>7,.0f} {t['mfu']:>6.1%} {ev['examples_per_second']:>10,.0f} "
                f"{ev['vs_train']:>9.1f}x {mb(t['peak_rss_bytes']):>13}"
            )
    lines.append("")
    header = (f"{'config':<12} {'params':>8} {'batch':>6} {'MFLOP/ex':>9} {'loader rows/s':>14} {'loader/train':>13} "
              f"{'pipeline ex/s':>14} {'vs memory':>10} {'worker RSS MB':>14} {'2-rank ex/s':>12} {'vs 1 rank':>10}")
    lines += ruled(header)
    for name, r in doc["configs"].items():
        loader, pipe = r["loader"], r["pipeline"]
        p = pipe["precision"]
        ranks = r.get("torchrun", {})
        two = f"{ranks['examples_per_second']:,.0f}" if "examples_per_second" in ranks else (
            "failed" if "error" in ranks else "-")
        vs = f"{ranks['vs_one_rank']:.2f}x" if "vs_one_rank" in ranks else "-"
        worker = mb(loader["worker_peak_rss_bytes"]) if loader["num_workers"] else "in-process"
        lines.append(
            f"{name:<12} {r['dense_parameters'] / 1e6:>7.1f}M {r['batch_size']:>6} "
            f"{r['flops_per_example'][p] / 1e6:>9.1f} {loader['rows_per_second']:>14,.0f} "
            f"{loader['vs_train'][p]:>12.1f}x {pipe['examples_per_second']:>14,.0f} "
            f"{pipe['vs_in_memory']:>9.1%} {worker:>14} {two:>12} {vs:>10}"
        )
    lines.append("")
    lines += format_peer_table(doc)
    lines += format_compile_table(doc)
    lines.append("pipeline = loader + sharded model + optimizers in the fastest precision (shown per config in the "
                 "JSON); loader/train compares with that precision's in-memory training; MFU = achieved GFLOP/s "
                 "(torch.utils.flop_counter, forward+backward) / the measured peak.")
    for name, r in doc["configs"].items():
        opt = r["dense_optimizer"]
        lines.append(
            f"{name}: {r['input_features']:,} input features, {r['dense_parameters']:,} dense parameters, batch "
            f"{r['batch_size']}, dense {opt['class']}{' (fused)' if opt['fused'] else ''}, gradient clipping "
            f"{opt['clip_grad_norm'] or 'off'}, loader num_workers {r['loader']['num_workers']}; measured in "
            f"{sum(r['phase_seconds'].values()):.0f} s"
        )
        prepared = r["loader"].get("prepared")
        if prepared:
            lines.append(f"{name}: loader on the prepared layout (`recap data prepare`): "
                         f"{prepared['rows_per_second']:,.0f} rows/s, {prepared['vs_parquet']:.1f}x parquet")
        if "error" in r.get("torchrun", {}):
            lines.append(f"{name}: torchrun failed: {r['torchrun']['error']}")
    lines.append(f"total {doc['seconds']:.0f} s")
    return "\n".join(lines)

