"""`recap data generate-small --output DIR [--rows 100000] [--seed 0]`: small rating/click logs (~1,000 users x
~2,000 items, long-tail popularity, two tasks) with oracle columns, split 80/10/10. See
projects/home/recap/baselines/small_data.py."""

from __future__ import annotations

import argparse
import os

from core.storage import location_argument
from core.storage_ops import staged_output
from projects.home.recap.baselines.small_data import DEFAULT_ROWS, generate_small


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=location_argument, help="directory; writes OUTPUT/train, OUTPUT/validation, OUTPUT/test")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"total rows over all splits ({DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")


def run(args: argparse.Namespace) -> int:
    if args.rows < 10:
        raise SystemExit(f"--rows must be at least 10 (got {args.rows})")
    with staged_output(args.output) as output:  # on an object store: written locally, then uploaded
        sizes = generate_small(output, args.rows, args.seed)
    for split, rows in sizes.items():
        print(f"{os.path.join(args.output, split)}: {rows} rows")
    return 0
