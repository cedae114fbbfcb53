"""`recap benchmark eval-memory`: the peak memory of exact evaluation per rank, sharded against gathered.

Each method runs in fresh processes (`--ranks` gloo ranks) over `--rows` synthetic rows (one request id per
`--request-size` rows); prints each rank's RSS before the metrics, its peak during compute + curves and the
difference, and how far the two methods' metrics agree. See projects/home/recap/benchmarks/eval_memory.py.
"""

from __future__ import annotations

import argparse

from projects.home.recap.benchmarks.eval_memory import (
    METHODS,
    EvalMemorySettings,
    format_eval_memory,
    run_eval_memory,
)
from projects.home.recap.benchmarks.reporting import write_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows over all ranks (10^7)")
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks (2)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks (2)")
    parser.add_argument("--request-size", type=int, default=10,
                        help="rows per request for the ranking metrics (10; 0: no request ids)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--output", help="also write the figures as JSON to this file")


def run(args: argparse.Namespace) -> int:
    settings = EvalMemorySettings(rows=args.rows, ranks=args.ranks, tasks=args.tasks,
                                  request_size=args.request_size, methods=tuple(args.methods))
    results = run_eval_memory(settings)
    print(format_eval_memory(results, settings.methods))
    if args.output:
        write_figures(results, args.output, "figures:")
    return 0
