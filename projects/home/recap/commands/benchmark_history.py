"""`recap benchmark history`: what the engagement history costs in training (demo_history.yaml against demo.yaml on
the same data, 1 rank and 2 ranks under torchrun), and the candidate-isolated transformer on long histories, request
path against row path (rows/s, FLOPs, GFLOP/s, MFU). See projects/home/recap/benchmarks/history.py.
"""

from __future__ import annotations

import argparse

from core.storage import local_path_argument
from projects.home.recap.benchmarks.history import PARTS, HistorySettings, run_history_benchmark
from projects.home.recap.benchmarks.reporting import quiet_logging, write_figures


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


def run(args: argparse.Namespace) -> int:
    settings = HistorySettings(
        parts=tuple(args.parts), data_dir=args.data_dir, train_batches=args.train_batches,
        train_seconds=args.train_seconds, torchrun=args.torchrun, lengths=tuple(args.lengths),
        candidates=tuple(args.candidates), rows=args.rows, dim=args.dim, layers=args.layers, heads=args.heads,
        dtype=args.dtype, seconds=args.seconds,
    )
    quiet_logging()
    doc = {"settings": vars(args), **run_history_benchmark(settings)}
    if args.output:
        write_figures(doc, args.output, "figures:")
    return 0
