"""`recap train --config FILE [--set k=v ...] [--nproc-per-node N]`: train alone, under torchrun, or on N local
workers started through torch's elastic launcher."""

from __future__ import annotations

import argparse

from core.distributed import launch_workers, launched_by_torchrun, quiet_library_logging, shutdown_distributed
from core.log import get_logger
from projects.home.recap.schema import load_recap_config

logger = get_logger(__name__)

MODULE = "projects.home.recap.main"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set training.num_train_steps=100")
    parser.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                        help="start N workers on this machine (torchrun --standalone); omit under torchrun")
    parser.add_argument("--max-restarts", type=int, default=0, metavar="K",
                        help="with --nproc-per-node: restart all workers up to K times after a failure; "
                             "they resume from the last checkpoint")
    parser.add_argument("--start-over", action="store_true",
                        help="if every checkpoint in save_dir is broken, move them aside and train from step 0 "
                             "(without it, training stops with an error naming each)")


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The command line each worker runs (the same training, without the launcher options)."""
    out = ["train", "--config", args.config]
    for override in args.overrides:
        out += ["--set", override]
    if args.start_over:
        out.append("--start-over")
    return out


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)  # a config error stops here, before any launch
    if args.nproc_per_node is not None and not launched_by_torchrun():
        if args.nproc_per_node < 1:
            raise SystemExit("--nproc-per-node must be at least 1")
        return launch_workers(args.nproc_per_node, MODULE, worker_arguments(args), args.max_restarts)
    if args.nproc_per_node is not None:
        logger.warning("--nproc-per-node is ignored under torchrun")
    quiet_library_logging()
    # Imported after the logging is quieted: loading torchrec and fbgemm logs at INFO.
    from core.checkpoint import CheckpointError
    from core.train_loop import NonFiniteLossError, TrainingStopped
    from projects.home.recap.data.errors import DataError
    from projects.home.recap.train import train

    try:
        result = train(config, start_over=args.start_over)
    except TrainingStopped as stopped:  # logged by the loop; the checkpoint is complete on every rank
        shutdown_distributed()
        return stopped.exit_status
    except (NonFiniteLossError, CheckpointError, DataError) as exc:
        logger.error("%s", exc)
        return 1
    shutdown_distributed()
    logger.info("done: step %d, checkpoint %s", result.step, result.checkpoint)
    return 0
