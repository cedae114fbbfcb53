"""`recap benchmark eval-memory`: the peak memory of exact evaluation per rank, sharded against gathered.

Each method runs in fresh processes (gloo ranks, torch.multiprocessing spawn). Every rank builds its share of the
synthetic rows (float32 predictions, 0/1 labels, weights, one request id per `request_size` rows, so requests are cut
by the rank split) in a MetricsAccumulator, then runs the evaluator's metric calls (compute, then curves). Memory is
the resident set (RSS) read from /proc/self/status: the peak (VmHWM) is reset just before the metrics (writing 5 to
/proc/self/clear_refs), so "peak" is the highest RSS during compute + curves and "delta" that peak minus the RSS just
before them (the rows already held by the accumulator are in the baseline, not the delta). The metrics documents of
both methods are compared: the largest relative difference of any value is printed. The rows each method has done
are reported as the methods finish (core.progress).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core import perf
from core.progress import Progress

METHODS = ("gather", "sharded")


@dataclasses.dataclass(frozen=True)
class EvalMemorySettings:
    """What `recap benchmark eval-memory` measures."""

    rows: int = 10_000_000  # over all ranks
    ranks: int = 2  # gloo ranks
    tasks: int = 2
    request_size: int = 10  # rows per request for the ranking metrics (0: no request ids)
    methods: tuple[str, ...] = METHODS


def rank_rows(rank: int, world: int, rows: int, tasks: int, request_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rank `rank`'s contiguous share of the synthetic rows (deterministic for each rank and number of ranks;
    request ids are row number // request_size, so a request can span two ranks)."""
    start, stop = rows * rank // world, rows * (rank + 1) // world
    rng = np.random.default_rng([seed, rank, world])
    n = stop - start
    truth = rng.uniform(0.01, 0.5, (n, tasks)).astype(np.float32)
    data = {
        # A score grid of 2^-16: many ties, as float32 model outputs have at this many rows.
        "predictions": np.round(np.clip(truth + rng.normal(0, 0.1, (n, tasks)).astype(np.float32), 0, 1) * 65536)
        .astype(np.float32) / np.float32(65536),
        "labels": (rng.uniform(size=(n, tasks)) < truth).astype(np.float32),
        "weights": rng.choice(np.array([1.0, 2.0, 10.0], dtype=np.float32), (n, tasks)),
    }
    if request_size > 0:
        data["request_ids"] = np.arange(start, stop, dtype=np.int64) // request_size
    return data


def _mib(n: int) -> float:
    return n / 2**20


def _worker(rank: int, world: int, port: int, method: str, args: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from core.metrics_accumulator import MetricsAccumulator
    from core.process_exit import end_process

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tasks = [f"task_{t}" for t in range(args["tasks"])]
    accumulator = MetricsAccumulator(method=method)
    data = rank_rows(rank, world, args["rows"], args["tasks"], args["request_size"])
    batch = 65536
    for i in range(0, data["predictions"].shape[0], batch):
        accumulator.update(**{k: torch.from_numpy(v[i : i + batch]) for k, v in data.items()})
    del data
    dist.barrier()
    before = perf.rss_bytes()
    if not perf.reset_peak_rss():
        raise RuntimeError("/proc/self/clear_refs cannot be written: this measurement needs Linux")
    start = time.perf_counter()
    metrics = accumulator.compute(tasks, ndcg_ks=(5, 10), score_weights=[1.0] * len(tasks),
                                  request_column="request" if args["request_size"] else None)
    curves = accumulator.curves(tasks)
    seconds = time.perf_counter() - start
    peak = perf.peak_rss_bytes()
    figures = {"rank": rank, "rss_before_mib": _mib(before), "peak_mib": _mib(peak),
               "delta_mib": _mib(peak - before), "seconds": seconds}
    Path(out_dir, f"{method}_rank{rank}.json").write_text(json.dumps(figures))
    if rank == 0:
        Path(out_dir, f"{method}_metrics.json").write_text(json.dumps({"metrics": metrics, "curves": curves}))
    dist.barrier()
    dist.destroy_process_group()
    end_process(0, collectives_ran=True)  # not Python's teardown, where gloo's threads can abort it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def largest_relative_difference(a, b, path: str = "") -> tuple[float, str]:
    """The largest |a − b| / max(|a|, |b|, 1e-12) over the numbers of two documents of the same structure (inf and
    the path when they differ in structure or in a non-number)."""
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        found = [largest_relative_difference(a[k], b[k], f"{path}.{k}") for k in a]
        return max(found, default=(0.0, path))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = [largest_relative_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        return max(found, default=(0.0, path))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(abs(a), abs(b), 1e-12), path
    return (0.0, path) if a == b else (math.inf, path)


def run_eval_memory(settings: EvalMemorySettings) -> dict[str, Any]:
    """Every method on settings.ranks fresh processes; the figures of each rank and, with both methods, the
    comparison."""
    import torch.multiprocessing as mp

    shared = {"rows": settings.rows, "tasks": settings.tasks, "request_size": settings.request_size}
    results: dict[str, Any] = {"settings": {**shared, "ranks": settings.ranks}, "memory": "RSS from /proc/self/status; "
                               "peak = VmHWM reset just before compute + curves, delta = peak - RSS before"}
    with (tempfile.TemporaryDirectory() as out_dir,
          Progress("exact evaluation, " + " then ".join(settings.methods),
                   total=settings.rows * len(settings.methods)) as progress):
        for method in settings.methods:
            mp.spawn(_worker, args=(settings.ranks, _free_port(), method, shared, out_dir), nprocs=settings.ranks)
            results[method] = [json.loads(Path(out_dir, f"{method}_rank{r}.json").read_text())
                               for r in range(settings.ranks)]
            progress.update(settings.rows)
        documents = {m: json.loads(Path(out_dir, f"{m}_metrics.json").read_text()) for m in settings.methods}
    if set(METHODS) <= set(settings.methods):
        gather0, sharded = results["gather"][0], results["sharded"]
        difference, where = largest_relative_difference(documents["gather"], documents["sharded"])
        results["comparison"] = {
            "sharded_max_peak_over_gather_rank0_peak": max(r["peak_mib"] for r in sharded) / gather0["peak_mib"],
            "sharded_max_delta_over_gather_rank0_delta": max(r["delta_mib"] for r in sharded) / gather0["delta_mib"],
            "largest_relative_difference": difference, "at": where,
        }
    return results


def format_eval_memory(results: dict[str, Any], methods: tuple[str, ...]) -> str:
    """The figures of every rank of every method, then the comparison, as text."""
    s = results["settings"]
    lines = [f"exact evaluation of {s['rows']:,} rows x {s['tasks']} tasks on {s['ranks']} gloo ranks "
             f"(requests of {s['request_size']} rows); RSS in MiB, peak during compute + curves",
             f"{'method':<8} {'rank':>4} {'RSS before':>11} {'peak':>8} {'delta':>8} {'seconds':>8}"]
    for method in methods:
        for r in results[method]:
            lines.append(f"{method:<8} {r['rank']:>4} {r['rss_before_mib']:>11.0f} {r['peak_mib']:>8.0f} "
                         f"{r['delta_mib']:>8.0f} {r['seconds']:>8.1f}")
    c = results.get("comparison")
    if c:
        lines.append(f"sharded's highest rank peak / gather's rank-0 peak: "
                     f"{c['sharded_max_peak_over_gather_rank0_peak']:.2f} (deltas: "
                     f"{c['sharded_max_delta_over_gather_rank0_delta']:.2f}); metrics and curves agree to "
                     f"{c['largest_relative_difference']:.1e} relative (largest at {c['at'] or 'nowhere'})")
    return "\n".join(lines)
