"""`recap data downsample --config FILE --output DIR --keep-rate Q`: drop all-negative rows, reweight the rest.

Each row that is negative for every task in data.tasks is kept with probability Q and its weight multiplied by 1/Q;
rows with any positive are all kept. The expected weighted loss of every task is unchanged.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow.parquet as pq

from core.progress import Progress
from core.storage import location_argument
from core.storage_ops import staged_output
from projects.home.recap.commands.data_options import add_dataset_argument, chosen_dataset
from projects.home.recap.data.downsampling import downsample_negatives
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.schema import load_recap_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--output", required=True, type=location_argument, help="directory for the downsampled parquet files")
    parser.add_argument("--keep-rate", type=float, required=True, help="fraction of all-negative rows kept, (0, 1]")
    add_dataset_argument(parser)
    parser.add_argument("--weight-column", help="column holding the row weight (default: data.features.weight, "
                        "else 'weight'); multiplied if present, created if not")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.keep_rate <= 1.0:
        raise SystemExit(f"--keep-rate must be in (0, 1], got {args.keep_rate}")
    config = load_recap_config(args.config, args.overrides)
    data = config.data
    dataset = chosen_dataset(data, args.dataset)
    weight_column = args.weight_column or data.features.weight or "weight"
    labels = sorted({t.label for t in data.tasks.values()})
    scanned = scan_dataset(dataset.paths, data.ignore_data_errors)
    with staged_output(args.output) as output:  # on an object store: written locally, then uploaded
        output.mkdir(parents=True, exist_ok=True)
        rows_in = rows_out = 0
        progress = Progress(f"downsampling {args.dataset}", scanned.num_rows)
        for i, source in enumerate(scanned.files):
            rng = np.random.default_rng([args.seed, i])
            handle = source.open()
            out_path = os.path.join(output, f"part-{i:05d}.parquet")
            writer = None
            for group in range(source.metadata.num_row_groups):
                table = handle.read_row_group(group)
                kept = downsample_negatives(table, labels, args.keep_rate, rng, weight_column)
                if writer is None:
                    writer = pq.ParquetWriter(out_path, kept.schema)
                writer.write_table(kept)
                rows_in += table.num_rows
                rows_out += kept.num_rows
                progress.update(table.num_rows)
            if writer is not None:
                writer.close()
        progress.close()
    print(f"{rows_in} rows in, {rows_out} rows out ({len(scanned.files)} files in {args.output})")
    print("train on them with:")
    print(f"  --set data.{'train' if args.dataset == 'train' else 'validation.' + args.dataset}.paths=[{args.output}]"
          f" --set data.features.weight={weight_column}")
    return 0
