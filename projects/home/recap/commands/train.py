"""`recap train --config FILE [--set k=v ...] [--nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT --rdzv-id ID]]`:
train alone, under torchrun, on N local workers started through torch's elastic launcher, or on N workers on each of
M machines whose launchers meet at HOST:PORT."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from core.distributed import (
    Rendezvous,
    launch_workers,
    launched_by_torchrun,
    quiet_library_logging,
    shutdown_distributed,
)
from core.log import get_logger
from core.object_path import ObjectPath
from core.storage import location
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
    parser.add_argument("--nnodes", type=int, default=1, metavar="M",
                        help="with --nproc-per-node: train on M machines; run the same command on each (needs "
                             "--rdzv-endpoint and --rdzv-id)")
    parser.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                        help="with --nnodes: where the launchers meet, a free port on one of the machines (it hosts "
                             "the rendezvous: losing that machine ends the job)")
    parser.add_argument("--rdzv-id", default=None, metavar="ID",
                        help="with --nnodes: a name for this job, the same on every machine")
    parser.add_argument("--start-over", action="store_true",
                        help="train from step 0: every checkpoint in save_dir, healthy or broken, is moved aside "
                             "as step_N.replaced (without it, training resumes from the newest good checkpoint, and "
                             "stops with an error naming each when all are broken)")


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The command line each worker runs (the same training, without the launcher options)."""
    out = ["train", "--config", args.config]
    for override in args.overrides:
        out += ["--set", override]
    if args.start_over:
        out.append("--start-over")
    return out


def launcher_options(args: argparse.Namespace) -> Rendezvous | None:
    """Check the launcher options together; the multi-node rendezvous, or None on one machine. SystemExit names the
    option that is wrong."""
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise SystemExit("--nproc-per-node must be at least 1")
    if args.max_restarts < 0:
        raise SystemExit("--max-restarts must be at least 0")
    if args.nnodes < 1:
        raise SystemExit("--nnodes must be at least 1")
    launcher_only = {"--max-restarts": args.max_restarts != 0, "--nnodes": args.nnodes != 1,
                     "--rdzv-endpoint": args.rdzv_endpoint is not None, "--rdzv-id": args.rdzv_id is not None}
    given = [name for name, set_ in launcher_only.items() if set_]
    if given and args.nproc_per_node is None:
        raise SystemExit(f"{', '.join(given)} needs --nproc-per-node (the workers to start on this machine)")
    if args.nnodes == 1:
        rendezvous_only = [name for name in ("--rdzv-endpoint", "--rdzv-id") if name in given]
        if rendezvous_only:
            raise SystemExit(f"{' and '.join(rendezvous_only)} needs --nnodes of 2 or more (one machine needs no "
                             "rendezvous)")
        return None
    missing = [name for name in ("--rdzv-endpoint", "--rdzv-id") if name not in given]
    if missing:
        raise SystemExit(f"--nnodes {args.nnodes} needs {' and '.join(missing)}: the same on every machine")
    try:
        return Rendezvous(args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    except ValueError as exc:
        raise SystemExit(f"--rdzv-endpoint / --rdzv-id: {exc}") from None


def checked_stop(status: int, save_dir: Path | ObjectPath, launched_at: float) -> int:
    """The launcher's exit status once its workers ended: a stop signal's status (143, 130) only when the workers
    wrote a complete checkpoint after they were launched, so a wrapper that sees 143 can rely on one; else 1."""
    if status <= 128:
        return status
    from core.checkpoint import INFO_FILE, list_checkpoints
    from core.train_loop import CHECKPOINT_DIR

    checkpoints = list_checkpoints(save_dir / CHECKPOINT_DIR)
    newest = checkpoints[-1].path if checkpoints else None
    if newest is not None and (newest / INFO_FILE).stat().st_mtime >= launched_at:
        logger.warning("stopped by %s with checkpoint %s: rerun the same command to resume",
                       signal.Signals(status - 128).name, newest)
        return status
    logger.error("stopped by %s, but the workers wrote no checkpoint in %s before they ended (newest: %s): the "
                 "steps since then are lost", signal.Signals(status - 128).name, save_dir / CHECKPOINT_DIR, newest)
    return 1


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)  # a config error stops here, before any launch
    if not launched_by_torchrun():
        rendezvous = launcher_options(args)
        if args.nproc_per_node is not None:
            launched_at = time.time()
            status = launch_workers(args.nproc_per_node, MODULE, worker_arguments(args), args.max_restarts,
                                    rendezvous)
            return checked_stop(status, location(config.training.save_dir), launched_at)
    elif args.nproc_per_node is not None:
        logger.warning("--nproc-per-node and the other launcher options are ignored under torchrun")
    quiet_library_logging()
    # Imported after the logging is quieted: loading torchrec and fbgemm logs at INFO.
    from core.checkpoint import CheckpointError
    from core.loss_window import NonFiniteLossError
    from core.stop_signals import TrainingStopped
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
