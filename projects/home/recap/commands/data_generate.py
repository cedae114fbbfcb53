"""`recap data generate --output DIR [--rows N] [--seed S]`: synthetic recap-shaped parquet with oracle columns."""

from __future__ import annotations

import argparse
import os
import time

from core.log import get_logger
from projects.home.recap.data.synthetic import DEFAULT_SPLITS, generate

logger = get_logger(__name__)

# One epoch of the demo config on 2 CPU cores in a few minutes.
DEFAULT_ROWS = 500_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="directory; writes OUTPUT/train, OUTPUT/validation, OUTPUT/test")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"total rows over all splits ({DEFAULT_ROWS})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--row-group-size", type=int, default=16_384)
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                        help="files written in parallel (the output does not depend on it)")


def run(args: argparse.Namespace) -> int:
    if args.rows < 1 or args.rows_per_file < 1 or args.row_group_size < 1:
        raise SystemExit("--rows, --rows-per-file and --row-group-size must be positive")
    start = time.perf_counter()
    sizes = generate(args.output, args.rows, args.seed, splits=DEFAULT_SPLITS, rows_per_file=args.rows_per_file,
                     row_group_size=args.row_group_size, processes=args.processes)
    seconds = time.perf_counter() - start
    for split, rows in sizes.items():
        print(f"{os.path.join(args.output, split)}: {rows} rows")
    print(f"{args.rows} rows in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s)")
    return 0
