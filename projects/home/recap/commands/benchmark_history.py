"""`recap benchmark history`: what the engagement history costs in training, and the candidate-isolated transformer
on long histories, request path against row path.

Training (`--parts training`): the demo config with its 32-item history (demo_history.yaml) against the demo config
without it (demo.yaml), on the same data (`recap data generate --history-length 32`, written to a temporary
directory unless --data-dir is given): rows/s of the training loop's step on 1 rank (the two configs timed in turns
in one process) and on 2 ranks under torchrun, as `make demo` trains, and the ratio.

Transformer (`--parts transformer`): for each history length (default 128 and 1024) and number of candidates per request (1, 16, 64), a batch of rows
(the same rows either way) is scored twice in inference mode:
  - request path: the history of each request is encoded once and all its candidates are scored in one pass
    (CandidateIsolatedTransformer.forward_request), what `share_requests` does when a request's rows sit together;
  - row path: every row encodes its own copy of its request's history (forward), what a ranker without request
    grouping does.
It prints rows/s, the FLOPs of one call (counted by torch's flop counter; the analytic attention_flops of the request
path beside them), GFLOP/s and MFU against the machine's measured matmul peak on the same matmul shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch

from common.sequence_encoders import CandidateIsolatedTransformer, attention_flops
from core import perf
from core.storage import local_path_argument

PARTS = ("training", "transformer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (both)")
    parser.add_argument("--data-dir", help="training part: data written by `recap data generate --history-length 32` "
                                           "(default: 100,000 rows generated in a temporary directory)")
    parser.add_argument("--train-batches", type=int, default=8, help="training part: batches per config (8)")
    parser.add_argument("--train-seconds", type=float, default=10.0,
                        help="training part: measuring budget per config on 1 rank (10)")
    parser.add_argument("--torchrun", type=int, default=2, metavar="N",
                        help="training part: also on N ranks under torchrun (2; 0 skips)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024], metavar="L",
                        help="history lengths (128 1024)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 16, 64], metavar="C",
                        help="candidates per request (1 16 64)")
    parser.add_argument("--rows", type=int, default=256, help="rows (candidates) per call at length 128; longer "
                                                             "histories use proportionally fewer, at least one request")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring budget per path and setting")
    parser.add_argument("--output", type=local_path_argument, help="also write the figures as JSON to this file")


def _inputs(requests: int, per_request: int, length: int, dim: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(requests, length, dim, generator=g).to(dtype)
    lengths = torch.randint(length // 2, length + 1, (requests,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    candidates = torch.randn(requests, per_request, dim, generator=g).to(dtype)
    return history, mask, candidates


def measure(length: int, per_request: int, rows: int, args: argparse.Namespace, peak_cache: dict) -> dict:
    dtype = getattr(torch, args.dtype)
    requests = max(1, rows // per_request)
    rows = requests * per_request
    torch.manual_seed(0)
    model = CandidateIsolatedTransformer(args.dim, args.layers, args.heads, max_length=length).to(dtype).eval()
    history, mask, candidates = _inputs(requests, per_request, length, args.dim, dtype)
    # The row path: each row carries its request's history.
    row_history = history.repeat_interleave(per_request, 0)
    row_mask = mask.repeat_interleave(per_request, 0)
    row_candidates = candidates.reshape(rows, args.dim)

    def request_path() -> None:
        with torch.no_grad():
            model.forward_request(history, mask, candidates)

    def row_path() -> None:
        with torch.no_grad():
            model(row_history, row_mask, row_candidates)

    out: dict = {"history_length": length, "candidates_per_request": per_request, "rows": rows,
                 "requests": requests,
                 "attention_flops_request_path": attention_flops(requests, length, per_request, args.dim, args.layers)}
    with torch.no_grad():
        reference = model(row_history[:per_request], row_mask[:per_request], row_candidates[:per_request])
        grouped = model.forward_request(history[:1], mask[:1], candidates[:1])[0]
    out["max_abs_difference"] = float((reference.float() - grouped.float()).abs().max())
    for name, fn in (("request_path", request_path), ("row_path", row_path)):
        flops = perf.count_flops(fn)
        shapes = tuple(sorted(perf.record_matmul_shapes(fn)))
        if shapes not in peak_cache:
            peak_cache[shapes] = perf.matmul_peak([s for s, _ in shapes], dtype, budget_seconds=0.3).gflops
        timing = perf.time_call(fn, budget_seconds=args.seconds)
        gflops = flops / timing.best / 1e9
        out[name] = {"rows_per_second": rows / timing.best, "seconds_per_call": timing.best, "flops": flops,
                     "gflops": gflops, "peak_gflops": peak_cache[shapes], "mfu": gflops / peak_cache[shapes]}
    return out


def training(args: argparse.Namespace) -> dict:
    """The training part: demo_history.yaml against demo.yaml on the same data (see the module docstring)."""
    from projects.home.recap.benchmark import BenchmarkSettings, format_history_comparison, history_comparison
    from projects.home.recap.data.synthetic import SyntheticSpec, generate

    settings = dataclasses.replace(BenchmarkSettings(), train_seconds=args.train_seconds,
                                   torchrun_nproc=args.torchrun, torchrun_steps=2 * args.train_batches)
    # Progress lines from the benchmark only: torchrec and fbgemm log every table they build at INFO.
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="recap-history-data-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            generate(tmp, 100_000, spec=SyntheticSpec(history_length=32))
        doc = history_comparison(data_dir, settings, args.train_batches)
    print(format_history_comparison(doc))
    return doc


def run(args: argparse.Namespace) -> int:
    doc: dict = {"settings": vars(args)}
    if "training" in args.parts:
        doc["training"] = training(args)
    if "transformer" in args.parts:
        doc["results"] = transformer(args)
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=1))
        print(f"figures: {args.output}")
    return 0


def transformer(args: argparse.Namespace) -> list[dict]:
    """The transformer part (see the module docstring)."""
    torch.set_num_threads(torch.get_num_threads())
    print(f"candidate-isolated transformer: dim {args.dim}, {args.layers} layers, {args.heads} heads, {args.dtype}, "
          f"inference; {torch.get_num_threads()} threads")
    print(f"{'L':>5} {'C':>4} {'rows':>5} | {'request path rows/s':>19} {'GFLOP/s':>8} {'MFU':>6} | "
          f"{'row path rows/s':>15} {'GFLOP/s':>8} {'MFU':>6} | {'speed-up':>8}")
    results: list[dict] = []
    peaks: dict = {}
    for length in args.lengths:
        rows = max(1, args.rows * 128 // length)
        for per_request in args.candidates:
            r = measure(length, per_request, max(rows, per_request), args, peaks)
            results.append(r)
            a, b = r["request_path"], r["row_path"]
            print(f"{length:>5} {per_request:>4} {r['rows']:>5} | {a['rows_per_second']:>19,.0f} {a['gflops']:>8.1f} "
                  f"{a['mfu']:>6.1%} | {b['rows_per_second']:>15,.0f} {b['gflops']:>8.1f} {b['mfu']:>6.1%} | "
                  f"{a['rows_per_second'] / b['rows_per_second']:>7.1f}x")
    print("MFU: counted FLOP/s over the best FLOP/s this machine reaches on the same matmul shapes (measured now). "
          "Row and request paths agree to "
          f"{max(r['max_abs_difference'] for r in results):.1e} (max abs difference of a request's outputs).")
    return results
