"""`recap benchmark history`: what the engagement history costs in training, and the candidate-isolated transformer
on long histories, request path against row path.

Training (part "training"): the demo config with its 32-item history (demo_history.yaml) against the demo config
without it (demo.yaml), on the same data (`recap data generate --history-length 32`, written to a temporary
directory unless a data directory is given): rows/s of the training loop's step on 1 rank (the two configs timed in
turns in one process) and on 2 ranks under torchrun, as `make demo` trains, and the ratio.

Transformer (part "transformer"): for each history length (default 128 and 1024) and number of candidates per
request (1, 16, 64), a batch of rows (the same rows either way) is scored twice in inference mode:
  - request path: the history of each request is encoded once and all its candidates are scored in one pass
    (CandidateIsolatedTransformer.forward_request), what `share_requests` does when a request's rows sit together;
  - row path: every row encodes its own copy of its request's history (forward), what a ranker without request
    grouping does.
It prints rows/s, the FLOPs of one call (counted by torch's flop counter; the analytic attention_flops of the request
path beside them), GFLOP/s and MFU against the machine's measured matmul peak on the same matmul shapes.

Both parts report the rows their timed windows process as they go (core.progress).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.sequence_encoders import CandidateIsolatedTransformer, attention_flops
from core import perf
from core.distributed import init_distributed
from core.log import get_logger
from core.progress import Progress
from projects.home.recap.benchmarks.config_benchmark import (
    CONFIG_DIR,
    BenchmarkSettings,
    ConfigBenchmark,
    read_batches,
)
from projects.home.recap.benchmarks.multi_rank import multi_rank_in_turns
from projects.home.recap.benchmarks.timing import (
    calls_per_window,
    counter,
    gflops_per_second,
    interleaved_timing,
    mfu,
    rates,
    timing_json,
)
from projects.home.recap.schema import load_recap_config

logger = get_logger(__name__)

PARTS = ("training", "transformer")
HISTORY_PAIR = (("demo", CONFIG_DIR / "demo.yaml"), ("demo_history", CONFIG_DIR / "demo_history.yaml"))


@dataclasses.dataclass(frozen=True)
class HistorySettings:
    """What `recap benchmark history` measures (its options, under the same names)."""

    parts: tuple[str, ...] = PARTS
    data_dir: str | None = None  # training: `recap data generate --history-length 32` data (None: generated)
    train_batches: int = 8  # training: batches per config
    train_seconds: float = 10.0  # training: measuring budget per config on 1 rank
    torchrun: int = 2  # training: also on this many ranks under torchrun (0 skips)
    lengths: tuple[int, ...] = (128, 1024)  # transformer: history lengths
    candidates: tuple[int, ...] = (1, 16, 64)  # transformer: candidates per request
    rows: int = 256  # transformer: rows per call at length 128 (longer histories: proportionally fewer)
    dim: int = 64
    layers: int = 2
    heads: int = 4
    dtype: str = "float32"
    seconds: float = 2.0  # transformer: measuring budget per path and setting


# --- training, with and without the history -------------------------------------------------------------------------
def history_comparison(data_dir: Path, settings: BenchmarkSettings, batches: int = 8,
                       pair: tuple[tuple[str, Path], ...] = HISTORY_PAIR) -> dict[str, Any]:
    """Training rows/s of each config of `pair` (the first without the history, the second with it) on the same
    data, data_dir (written by `recap data generate --history-length L`): the training loop's step on `batches`
    batches read by each config's own loader, fp32, timed in turns in one process; then the same on
    settings.torchrun_nproc ranks in one torchrun job, the configs taking turns window by window, as `make demo`
    trains. Reports rows/s and the ratio with/without (best windows, and medians)."""
    os.environ["RECAP_DATA_DIR"] = str(data_dir)  # the demo configs' data paths; torchrun workers inherit it
    ctx = init_distributed("cpu")
    overrides = settings.config_overrides()
    out: dict[str, Any] = {"data": str(data_dir), "batches": batches, "configs": [n for n, _ in pair]}
    with tempfile.TemporaryDirectory(prefix="recap-benchmark-history-") as tmp:
        steps, calls, rows = {}, {}, {}
        for name, path in pair:
            config = load_recap_config(path, overrides)
            bench = ConfigBenchmark(name, config, settings, ctx, Path(tmp) / name)
            bench.batches = read_batches(config, bench.tasks, batches)
            steps[name] = bench.in_memory_step("fp32")
            # The first step allocates the optimizer's and the autograd's buffers.
            calls[name] = calls_per_window(steps[name], settings.window_seconds)
            rows[name] = bench.examples_per_step
            # FLOPs of one forward+backward, averaged over the batches (histories differ in length batch to batch).
            out.setdefault("flops_per_row", {})[name] = _flops_per_row(bench)
            items = [int(b.sequences[g]["lengths"].sum()) for b in bench.batches for g in b.sequences]
            if items:
                out["history_items_per_row"] = sum(items) / sum(b.batch_size for b in bench.batches)
        with Progress("history: training on 1 rank") as progress:
            timings = interleaved_timing(steps, settings.train_seconds, calls=calls, progress=progress, rows=rows)
        out["one_rank"] = {name: {**rates(rows[name], t, "rows"), "step": timing_json(t)}
                           for name, t in timings.items()}
        without, with_ = (n for n, _ in pair)
        out["one_rank"]["ratio"] = (out["one_rank"][with_]["rows_per_second"]
                                    / out["one_rank"][without]["rows_per_second"])
        out["one_rank"]["median_ratio"] = (out["one_rank"][with_]["median_rows_per_second"]
                                           / out["one_rank"][without]["median_rows_per_second"])
        flops = out["flops_per_row"]
        out["flops_ratio"] = flops[with_] / flops[without]
        # Rows/s ratio x FLOPs ratio: how fast the history step runs its FLOPs against the step without it.
        out["one_rank"]["flop_rate_ratio"] = out["one_rank"]["ratio"] * out["flops_ratio"]
        if settings.torchrun_nproc > 1:
            logger.info("history: %s on %d ranks under torchrun, in turns", " and ".join(n for n, _ in pair),
                        settings.torchrun_nproc)
            # Windows of one pass over the batches, the configs in turns, about train_seconds of them each.
            result = multi_rank_in_turns([path for _, path in pair], tuple(overrides), settings.torchrun_nproc, "fp32",
                                         batches, max(3, round(settings.train_seconds)), Path(tmp) / "torchrun",
                                         data_batches=batches)
            ranks: dict[str, Any] = {name: result for name, _ in pair} if "error" in result else {
                name: result[str(path)] for name, path in pair}
            if all("examples_per_second" in ranks[n] for n in (without, with_)):
                ranks["ratio"] = ranks[with_]["examples_per_second"] / ranks[without]["examples_per_second"]
                ranks["median_ratio"] = (ranks[with_]["median_examples_per_second"]
                                         / ranks[without]["median_examples_per_second"])
                ranks["flop_rate_ratio"] = ranks["ratio"] * out["flops_ratio"]
            out["torchrun"] = ranks
    return out


def _flops_per_row(bench: ConfigBenchmark) -> float:
    bench.model.train()
    total = 0
    for batch in bench.batches[:4]:
        def forward_backward(batch: Any = batch) -> None:
            bench.model(batch)[0].backward()

        total += perf.count_flops(forward_backward)
        bench.dense_optimizer.zero_grad()
    return total / sum(b.batch_size for b in bench.batches[:4])


def format_history_comparison(doc: dict[str, Any]) -> str:
    """The with/without history figures as a text table."""
    without, with_ = doc["configs"]
    lines = [f"training rows/s on the same data ({doc['data']}; {doc.get('history_items_per_row', 0):.1f} history "
             f"items per row), fp32, best window (median):",
             f"{'ranks':<10} {without + ' rows/s':>24} {with_ + ' rows/s':>28} {'ratio':>15} {'per FLOP':>9}"]
    one = doc["one_rank"]
    rows = [("1", one[without]["rows_per_second"], one[without]["median_rows_per_second"],
             one[with_]["rows_per_second"], one[with_]["median_rows_per_second"], one["ratio"],
             one.get("median_ratio", one["ratio"]), one["flop_rate_ratio"])]
    ranks = doc.get("torchrun")
    if ranks and "ratio" in ranks:
        rows.append((str(ranks[with_]["world_size"]), ranks[without]["examples_per_second"],
                     ranks[without]["median_examples_per_second"], ranks[with_]["examples_per_second"],
                     ranks[with_]["median_examples_per_second"], ranks["ratio"],
                     ranks.get("median_ratio", ranks["ratio"]), ranks["flop_rate_ratio"]))
    for label, a, am, b, bm, ratio, median_ratio, per_flop in rows:
        lines.append(f"{label:<10} {f'{a:,.0f} ({am:,.0f})':>24} {f'{b:,.0f} ({bm:,.0f})':>28} "
                     f"{f'{ratio:.2f}x ({median_ratio:.2f}x)':>15} {per_flop:>8.2f}x")
    flops = doc["flops_per_row"]
    lines.append(f"FLOPs per row (forward+backward): {without} {flops[without] / 1e6:.2f}M, {with_} "
                 f"{flops[with_] / 1e6:.2f}M ({doc['flops_ratio']:.2f}x); per FLOP = ratio x that: the rate at which "
                 "the history step runs its FLOPs against the step without it")
    if ranks:
        for name in (without, with_):
            if "error" in ranks.get(name, {}):
                lines.append(f"{name}: torchrun failed: {ranks[name]['error']}")
    return "\n".join(lines)


def training(settings: HistorySettings) -> dict[str, Any]:
    """The training part: demo_history.yaml against demo.yaml on the same data (see the module docstring)."""
    from projects.home.recap.data.synthetic import SyntheticSpec, generate

    bench = dataclasses.replace(BenchmarkSettings(), train_seconds=settings.train_seconds,
                                torchrun_nproc=settings.torchrun, torchrun_steps=2 * settings.train_batches)
    with tempfile.TemporaryDirectory(prefix="recap-history-data-") as tmp:
        data_dir = Path(settings.data_dir) if settings.data_dir else Path(tmp)
        if not settings.data_dir:
            generate(tmp, 100_000, spec=SyntheticSpec(history_length=32))
        doc = history_comparison(data_dir, bench, settings.train_batches)
    print(format_history_comparison(doc))
    return doc


# --- the transformer, request path against row path -------------------------------------------------------------------
def _inputs(requests: int, per_request: int, length: int, dim: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(requests, length, dim, generator=g).to(dtype)
    lengths = torch.randint(length // 2, length + 1, (requests,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    candidates = torch.randn(requests, per_request, dim, generator=g).to(dtype)
    return history, mask, candidates


def measure(length: int, per_request: int, rows: int, settings: HistorySettings, peak_cache: dict,
            progress: Progress | None = None) -> dict:
    """Both paths of one setting: rows/s, FLOPs, GFLOP/s and MFU of each, and how far their outputs differ."""
    dtype = getattr(torch, settings.dtype)
    requests = max(1, rows // per_request)
    rows = requests * per_request
    torch.manual_seed(0)
    model = CandidateIsolatedTransformer(settings.dim, settings.layers, settings.heads,
                                         max_length=length).to(dtype).eval()
    history, mask, candidates = _inputs(requests, per_request, length, settings.dim, dtype)
    # The row path: each row carries its request's history.
    row_history = history.repeat_interleave(per_request, 0)
    row_mask = mask.repeat_interleave(per_request, 0)
    row_candidates = candidates.reshape(rows, settings.dim)

    def request_path() -> None:
        with torch.no_grad():
            model.forward_request(history, mask, candidates)

    def row_path() -> None:
        with torch.no_grad():
            model(row_history, row_mask, row_candidates)

    out: dict = {"history_length": length, "candidates_per_request": per_request, "rows": rows,
                 "requests": requests,
                 "attention_flops_request_path": attention_flops(requests, length, per_request, settings.dim,
                                                                 settings.layers)}
    with torch.no_grad():
        reference = model(row_history[:per_request], row_mask[:per_request], row_candidates[:per_request])
        grouped = model.forward_request(history[:1], mask[:1], candidates[:1])[0]
    out["max_abs_difference"] = float((reference.float() - grouped.float()).abs().max())
    for name, fn in (("request_path", request_path), ("row_path", row_path)):
        flops = perf.count_flops(fn)
        shapes = tuple(sorted(perf.record_matmul_shapes(fn)))
        if shapes not in peak_cache:
            peak_cache[shapes] = perf.matmul_peak([s for s, _ in shapes], dtype, budget_seconds=0.3).gflops
        timing = perf.time_call(fn, budget_seconds=settings.seconds, on_window=counter(progress, rows))
        out[name] = {"rows_per_second": rows / timing.best, "seconds_per_call": timing.best, "flops": flops,
                     "gflops": gflops_per_second(flops, timing.best), "peak_gflops": peak_cache[shapes],
                     "mfu": mfu(flops, timing.best, peak_cache[shapes])}
    return out


def transformer(settings: HistorySettings) -> list[dict]:
    """The transformer part (see the module docstring): prints a line per setting as it is measured."""
    torch.set_num_threads(torch.get_num_threads())
    print(f"candidate-isolated transformer: dim {settings.dim}, {settings.layers} layers, {settings.heads} heads, "
          f"{settings.dtype}, inference; {torch.get_num_threads()} threads")
    print(f"{'L':>5} {'C':>4} {'rows':>5} | {'request path rows/s':>19} {'GFLOP/s':>8} {'MFU':>6} | "
          f"{'row path rows/s':>15} {'GFLOP/s':>8} {'MFU':>6} | {'speed-up':>8}")
    results: list[dict] = []
    peaks: dict = {}
    for length in settings.lengths:
        rows = max(1, settings.rows * 128 // length)
        for per_request in settings.candidates:
            # A report per setting, closed before its line is printed (a bar would share the line otherwise).
            with Progress(f"history: transformer, length {length}, {per_request} candidates") as progress:
                r = measure(length, per_request, max(rows, per_request), settings, peaks, progress)
            results.append(r)
            a, b = r["request_path"], r["row_path"]
            print(f"{length:>5} {per_request:>4} {r['rows']:>5} | {a['rows_per_second']:>19,.0f} {a['gflops']:>8.1f} "
                  f"{a['mfu']:>6.1%} | {b['rows_per_second']:>15,.0f} {b['gflops']:>8.1f} {b['mfu']:>6.1%} | "
                  f"{a['rows_per_second'] / b['rows_per_second']:>7.1f}x", flush=True)
    print("MFU: counted FLOP/s over the best FLOP/s this machine reaches on the same matmul shapes (measured now). "
          "Row and request paths agree to "
          f"{max(r['max_abs_difference'] for r in results):.1e} (max abs difference of a request's outputs).")
    return results


def run_history_benchmark(settings: HistorySettings) -> dict[str, Any]:
    """The parts settings.parts names, printed as they are measured; every figure as one document."""
    doc: dict[str, Any] = {}
    if "training" in settings.parts:
        doc["training"] = training(settings)
    if "transformer" in settings.parts:
        doc["results"] = transformer(settings)
    return doc
