"""`recap predict --config FILE --checkpoint PATH --input PARQUET... --output DIR [--batch-size N]`: score parquet
rows with a checkpoint; each rank writes DIR/part-<rank>-of-<world>.parquet with the id columns and, per task,
`<task>.probability` and `<task>.calibrated`. Runs alone, under torchrun, or on N local workers with --nproc-per-node."""

from __future__ import annotations

import argparse
import sys

from core.distributed import launch_workers, launched_by_torchrun, quiet_library_logging, shutdown_distributed
from core.log import get_logger
from core.storage import location_argument
from projects.home.recap.commands.run_source import (
    add_source_arguments,
    checkpoint_of,
    load_source_config,
    source_arguments,
)

logger = get_logger(__name__)

MODULE = "projects.home.recap.main"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "a checkpoint directory, a run's save_dir or checkpoints dir (their latest), or "
                                 "'latest' (the latest under training.save_dir); required with --config")
    parser.add_argument("--input", dest="inputs", nargs="+", required=True, metavar="PARQUET",
                        help="parquet files, directories or globs to score (label columns are not needed)")
    parser.add_argument("--output", required=True, type=location_argument, metavar="DIR", help="directory for the part files")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="rows per forward pass (default data.eval_batch_size, else data.batch_size)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier part files in --output")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                        help="start N workers on this machine (torchrun --standalone); omit under torchrun")


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The command line each worker runs (the same scoring, without the launcher options)."""
    out = ["predict", *source_arguments(args), "--input", *args.inputs, "--output", args.output]
    if args.batch_size is not None:
        out += ["--batch-size", str(args.batch_size)]
    if args.overwrite:
        out.append("--overwrite")
    for override in args.overrides:
        out += ["--set", override]
    return out


def run(args: argparse.Namespace) -> int:
    config = load_source_config(args)
    checkpoint = checkpoint_of(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")
    if args.nproc_per_node is not None and not launched_by_torchrun():
        if args.nproc_per_node < 1:
            raise SystemExit("--nproc-per-node must be at least 1")
        return launch_workers(args.nproc_per_node, MODULE, worker_arguments(args))
    quiet_library_logging()
    # Imported after the logging is quieted: loading torchrec and fbgemm logs at INFO.
    from core.checkpoint import CheckpointError
    from core.distributed import init_distributed
    from projects.home.recap.data.errors import DataError
    from projects.home.recap.predict import PredictError, predict

    try:
        ctx = init_distributed(config.training.device)
        result = predict(config, checkpoint, args.inputs, args.output, ctx, args.batch_size, args.overwrite)
    except (CheckpointError, DataError, PredictError) as exc:
        print(f"recap predict: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if ctx.is_main:
        print(f"{result.rows} rows scored into {args.output}")
    return 0
