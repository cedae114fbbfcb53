"""`recap data stats --config FILE [--output PATH]`: continuous-feature statistics (JSON) for zscore_log and the
quantile bin boundaries for model.numeric_embeddings."""

from __future__ import annotations

import argparse
import json
import os

from core.storage import local_path_argument
from projects.home.recap.commands.data_options import add_dataset_argument, chosen_dataset
from projects.home.recap.data.stats import MAX_BINS, continuous_stats
from projects.home.recap.schema import load_recap_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--output", type=local_path_argument, help="JSON file to write (default: print)")
    add_dataset_argument(parser)
    parser.add_argument("--max-rows", type=int, help="use only the first N rows")
    parser.add_argument("--max-bins", type=int, default=MAX_BINS,
                        help=f"at most this many quantile bins per value (default: {MAX_BINS})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)
    data = config.data
    dataset = chosen_dataset(data, args.dataset)
    if args.max_bins < 1:
        raise SystemExit(f"--max-bins {args.max_bins}: must be at least 1")
    stats = continuous_stats(data, dataset, args.max_rows, max_bins=args.max_bins)
    text = json.dumps(stats, indent=1)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
        print(f"{args.output}: {len(stats['mean'])} values over {stats['count']} rows")
    else:
        print(text)
    return 0
