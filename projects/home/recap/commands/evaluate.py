"""`recap evaluate --config FILE [--checkpoint PATH|latest] [--dataset NAME ...] [--watch [--timeout S]]`: exact
metrics of a checkpoint on the validation sets, written to SAVE_DIR/eval/<dataset>/step_<N>/ (metrics.json,
curves.json, report.md, report.html) and to TensorBoard under SAVE_DIR/tensorboard. Runs alone, under torchrun, or
on N local workers with --nproc-per-node."""

from __future__ import annotations

import argparse
import logging
import sys

from core.distributed import launch_workers, launched_by_torchrun, quiet_library_logging, shutdown_distributed
from core.log import get_logger
from projects.home.recap.commands.run_source import (
    add_source_arguments,
    checkpoint_of,
    load_source_config,
    source_arguments,
)

logger = get_logger(__name__)

MODULE = "projects.home.recap.main"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "a checkpoint directory, a run's save_dir or checkpoints dir (their best by "
                                 "training.early_stopping when marked, else their newest), or 'best' / 'latest' "
                                 "(that checkpoint under training.save_dir); default: training.save_dir's best, "
                                 "else its newest")
    parser.add_argument("--dataset", dest="datasets", action="append", default=None, metavar="NAME",
                        help="validation set to evaluate (repeatable; default evaluation.datasets, else all of "
                             "data.validation)")
    parser.add_argument("--watch", action="store_true",
                        help="evaluate every checkpoint under --checkpoint (a checkpoints dir or save_dir; default "
                             "training.save_dir/checkpoints) as training writes it, until the final step")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --watch: stop when no new checkpoint appeared for this long (default: never)")
    parser.add_argument("--poll-interval", type=float, default=30.0, metavar="SECONDS",
                        help="with --watch: how often to look for a new checkpoint (30)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set data.eval_batch_size=4096")
    parser.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                        help="start N workers on this machine (torchrun --standalone); omit under torchrun")


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The command line each worker runs (the same evaluation, without the launcher options)."""
    out = ["evaluate", *source_arguments(args), "--poll-interval", str(args.poll_interval)]
    for name in args.datasets or []:
        out += ["--dataset", name]
    if args.watch:
        out.append("--watch")
    if args.timeout is not None:
        out += ["--timeout", str(args.timeout)]
    for override in args.overrides:
        out += ["--set", override]
    return out


def run(args: argparse.Namespace) -> int:
    config = load_source_config(args)
    checkpoint = checkpoint_of(args, default="default")
    if args.timeout is not None and not args.watch:
        raise SystemExit("--timeout applies to --watch only")
    if args.nproc_per_node is not None and not launched_by_torchrun():
        if args.nproc_per_node < 1:
            raise SystemExit("--nproc-per-node must be at least 1")
        return launch_workers(args.nproc_per_node, MODULE, worker_arguments(args))
    quiet_library_logging()
    # Reading the training's TensorBoard events for the report logs per file at INFO.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    # Imported after the logging is quieted: loading torchrec and fbgemm logs at INFO.
    from core.checkpoint import CheckpointError
    from core.distributed import init_distributed
    from projects.home.recap.data.errors import DataError
    from projects.home.recap.eval_report import summary_lines
    from projects.home.recap.eval_watch import watch_checkpoints
    from projects.home.recap.evaluate import evaluate_checkpoint
    from projects.home.recap.inference import DEFAULT, LATEST

    try:
        ctx = init_distributed(config.training.device)
        if args.watch:
            directory = None if checkpoint in (DEFAULT, LATEST) else checkpoint
            steps = watch_checkpoints(config, ctx, args.datasets, directory, args.poll_interval, args.timeout)
            if ctx.is_main:
                print(f"evaluated steps: {', '.join(map(str, steps)) or 'none'}")
            if not steps:
                print("recap evaluate: no checkpoint was evaluated before the timeout", file=sys.stderr)
            return 0 if steps else 1
        found, documents = evaluate_checkpoint(config, checkpoint, args.datasets, ctx)
    except (CheckpointError, DataError) as exc:
        print(f"recap evaluate: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if documents:
        print("\n".join(summary_lines(documents)))
        for name in documents:
            print(f"report: {checkpoint_report(config.training.save_dir, name, found.step)}")
    return 0


def checkpoint_report(save_dir: str, dataset: str, step: int) -> str:
    """Path of the report.html of one dataset at one step."""
    from core.report import eval_step_dir

    return str(eval_step_dir(save_dir, dataset, step) / "report.html")
