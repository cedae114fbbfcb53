"""The training step on several ranks under torchrun against one rank: `multi_rank` launches this module with
torchrun, and every rank times the in-memory training step (a fixed step count: the step is collective)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core import perf
from core.distributed import init_distributed
from core.process_exit import run_and_end
from projects.home.recap.benchmarks.config_benchmark import BenchmarkSettings, ConfigBenchmark, read_batches
from projects.home.recap.benchmarks.timing import interleaved_timing
from projects.home.recap.schema import load_recap_config


def _worker_main(argv: list[str]) -> int:
    """Under torchrun: time the in-memory training step on every rank (fixed step counts: the step is collective).
    With several --config, the configs take turns window by window (`--rounds` windows of `--steps` steps each), so
    a load that comes and goes on the machine falls on all of them alike."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config", required=True, action="append")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=0,
                        help="windows of --steps steps per config, in turns (0: --steps windows of one step)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--data-batches", type=int, default=0,
                        help="train on this many batches read from the config's training data (0: random batches)")
    args = parser.parse_args(argv)
    ctx = init_distributed("cpu")
    results = {}
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-rank-") as tmp:
        steps, examples = {}, {}
        for i, path in enumerate(args.config):
            config = load_recap_config(path, args.overrides)
            bench = ConfigBenchmark("worker", config, BenchmarkSettings(), ctx, Path(tmp) / str(i))
            if args.data_batches:
                bench.batches = read_batches(config, bench.tasks, args.data_batches, ctx.rank, ctx.world_size)
            steps[path], examples[path] = bench.in_memory_step(args.precision), bench.examples_per_step
        with perf.peak_rss_window() as mem:
            if args.rounds:
                # Two untimed steps each first: they allocate the optimizer's and autograd's buffers.
                timings = interleaved_timing(steps, 0.0, calls=args.steps, warmup=2, min_rounds=args.rounds)
            else:
                timings = {path: perf.time_call(step, warmup=2, min_repeats=args.steps, max_repeats=args.steps,
                                                budget_seconds=0.0) for path, step in steps.items()}
        for path, timing in timings.items():
            rate = torch.tensor([examples[path] / timing.best, examples[path] / timing.median, float(mem["peak_rss"])])
            rates = [torch.zeros_like(rate) for _ in range(ctx.world_size)]
            torch.distributed.all_gather(rates, rate)
            results[path] = {
                "world_size": ctx.world_size,
                "threads_per_rank": torch.get_num_threads(),
                "examples_per_second": sum(r[0].item() for r in rates),
                "median_examples_per_second": sum(r[1].item() for r in rates),
                "per_rank_examples_per_second": [r[0].item() for r in rates],
                "per_rank_peak_rss_bytes": [int(r[2].item()) for r in rates],
            }
    if ctx.is_main:
        Path(args.output).write_text(json.dumps(results))
    torch.distributed.destroy_process_group()
    return 0


def multi_rank(config_path: Path, overrides: tuple[str, ...], nproc: int, precision: str, steps: int,
               workdir: Path, data_batches: int = 0) -> dict[str, Any]:
    """Launch the training-step benchmark on nproc ranks with torchrun (on random batches, or on data_batches
    batches per rank read from the config's training data); {} with an error message if it failed."""
    result = _launch([config_path], overrides, nproc, precision, ["--steps", str(steps)], workdir, data_batches)
    return result.get(str(config_path), result)


def multi_rank_in_turns(config_paths: list[Path], overrides: tuple[str, ...], nproc: int, precision: str,
                        steps: int, rounds: int, workdir: Path, data_batches: int = 0) -> dict[str, Any]:
    """Like multi_rank for several configs in one torchrun job, taking turns window by window (`rounds` windows of
    `steps` steps each): {str(config path): its figures}, or {"error": ...}."""
    return _launch(config_paths, overrides, nproc, precision, ["--steps", str(steps), "--rounds", str(rounds)],
                   workdir, data_batches)


def _launch(config_paths: list[Path], overrides: tuple[str, ...], nproc: int, precision: str, timing: list[str],
            workdir: Path, data_batches: int) -> dict[str, Any]:
    """{str(config path): its figures, with the precision and the job's wall seconds}, or {"error": ...}."""
    output = workdir / f"torchrun_{nproc}.json"
    workdir.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "projects.home.recap.benchmarks.multi_rank", "--precision", precision, "--output", str(output),
           "--data-batches", str(data_batches), *timing]
    for path in config_paths:
        cmd += ["--config", str(path)]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ)
    # One OpenMP thread per rank per core share, as torchrun would pick; explicit so the figure is reproducible.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not output.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"torchrun exited with {proc.returncode}: " + " | ".join(tail)}
    wall = time.perf_counter() - start
    return {path: {**figures, "precision": precision, "wall_seconds": wall}
            for path, figures in json.loads(output.read_text()).items()}


if __name__ == "__main__":
    run_and_end(lambda: _worker_main(sys.argv[1:]))
