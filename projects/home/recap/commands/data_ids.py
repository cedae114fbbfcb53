"""`recap data ids --config FILE [--dataset train] [--max-rows N] [--output PATH]`: the distinct ids each large
embedding table would hold (its sparse features and the history id columns that read it), against its size: the
expected share of ids sharing a row with another id (id_counts.py)."""

from __future__ import annotations

import argparse
import json
import os

from core.storage import local_path_argument
from projects.home.recap.commands.data_options import add_dataset_argument, chosen_dataset
from projects.home.recap.id_counts import count_ids
from projects.home.recap.schema import load_recap_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    add_dataset_argument(parser)
    parser.add_argument("--max-rows", type=int, help="read only the first N rows")
    parser.add_argument("--output", type=local_path_argument, help="also write the figures to this JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def format_counts(counts: dict) -> str:
    """The figures as a table, a line per table."""
    lines = [f"{counts['rows']:,} rows",
             f"{'table':<26} {'ids':>12} {'distinct':>12} {'rows':>12} {'transform':>9} {'shared rows':>12}  columns"]
    for name, t in counts["tables"].items():
        distinct = f"{t['distinct']:,.0f}" + ("" if t["distinct_exact"] else "~")
        lines.append(f"{name:<26} {t['ids']:>12,} {distinct:>12} {t['num_embeddings']:>12,} {t['id_transform']:>9} "
                     f"{t['shared_rows']:>12.1%}  {', '.join(t['columns'])}{' (strings)' if t['strings'] else ''}")
    lines.append("shared rows: the expected share of distinct ids whose table row another id also uses "
                 "(1 - e^(-distinct/rows): 63% at rows = distinct, 22% at 4x, 6% at 16x; 0 for `mod` with integer "
                 "ids below the table size); ~: estimated (about 1% error)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)
    data = config.data
    dataset = chosen_dataset(data, args.dataset)
    if args.max_rows is not None and args.max_rows < 1:
        raise SystemExit(f"--max-rows {args.max_rows}: must be at least 1")
    counts = count_ids(config, dataset.paths, args.max_rows)
    if not counts["tables"]:
        raise SystemExit(f"{args.config}: the model has no large embedding tables (model.large_embeddings)")
    print(format_counts(counts))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(json.dumps(counts, indent=1) + "\n")
        print(f"figures written to {args.output}")
    return 0
