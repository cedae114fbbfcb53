"""`recap data prepare SRC DST --config FILE`: runs `prepare` of data/preparing.py, which describes it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.log import get_logger
from core.storage import location_argument
from core.storage_ops import staged_output
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.preparing import prepare
from projects.home.recap.schema import load_recap_config

logger = get_logger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="parquet file, directory, glob or URL")
    parser.add_argument("destination", metavar="DST", type=location_argument, help="local directory to write the prepared dataset to")
    parser.add_argument("--config", default=str(DEMO_CONFIG),
                        help="experiment YAML whose data.features and data.tasks say which columns to prepare and "
                             "how (default: the demo config)")
    parser.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                        help="IPC buffer compression (default none: read memory-mapped, without a copy; lz4 or "
                             "zstd make smaller files that are decompressed as they are read)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a prepared dataset of another source or config in DST")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)
    start = time.perf_counter()
    try:
        with staged_output(args.destination) as destination:  # on an object store: prepared locally, then uploaded
            manifest = prepare(config.data, args.source, str(destination), args.compression, args.overwrite)
    except DataError as exc:
        print(f"recap data prepare: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a destination that cannot be written: the message names the path
        print(f"recap data prepare: {args.destination}: {exc.strerror or exc}"
              f"{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    size = sum(e["bytes"] for e in manifest["files"])
    print(f"{args.destination}: {manifest['num_rows']:,} rows in {len(manifest['files'])} files "
          f"({size / 2**20:,.0f} MiB) in {seconds:.1f} s")
    print(f"train on it with: --set data.train.paths=[{args.destination}]")
    return 0
