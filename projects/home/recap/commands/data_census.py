"""`recap data census --input PATH --output DIR`: the UCI Census-Income (KDD) file as train/validation/test parquet
(and the train split's statistics, DIR/stats.json)."""

from __future__ import annotations

import argparse
import os

from core.storage import location_argument
from core.storage_ops import staged_output
from projects.home.recap.data.census import STATS_FILE, convert_census


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="census-income.data(.gz) or census-income.test(.gz)")
    parser.add_argument("--output", required=True, type=location_argument, help="directory; writes OUTPUT/{train,validation,test}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/10/10 split")


def run(args: argparse.Namespace) -> int:
    with staged_output(args.output) as output:  # on an object store: written locally, then uploaded
        sizes = convert_census(args.input, output, seed=args.seed)
    for split, rows in sizes.items():
        print(f"{os.path.join(args.output, split)}: {rows} rows")
    print(f"total: {sum(sizes.values())} rows; vocabularies in {os.path.join(args.output, 'vocabulary.json')}, "
          f"train statistics in {os.path.join(args.output, STATS_FILE)}")
    return 0
