"""Where the scoring commands (evaluate, predict, export) take their config and checkpoint from: an experiment YAML
with --config, or a training run's save_dir with --run (its config.yaml is the resolved config the run trained
with, --set values included, and its checkpoints are the run's)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from core.config import ConfigError
from core.storage import location, location_argument
from projects.home.recap.schema import RecapConfig, load_recap_config

RUN_CONFIG = "config.yaml"


def add_source_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """--config FILE | --run SAVE_DIR (exactly one), and --checkpoint."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="experiment YAML the checkpoint was trained with")
    source.add_argument("--run", metavar="SAVE_DIR", type=location_argument,
                        help=f"a training run's save_dir: its {RUN_CONFIG} (the config it trained with, --set values "
                             "included) and, unless --checkpoint names another, its latest checkpoint")
    parser.add_argument("--checkpoint", default=None, type=location_argument, help=checkpoint_help)


def load_source_config(args: argparse.Namespace) -> RecapConfig:
    """The config of --config (with --set), or of --run's save_dir (with --set, and training.save_dir there)."""
    if args.run is None:
        return load_recap_config(args.config, args.overrides)
    path = location(args.run) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"--run {args.run}: no {RUN_CONFIG} there (training writes it into its save_dir)")
    overrides = [*args.overrides, f"training.save_dir={args.run}"]
    if isinstance(path, Path):
        return load_recap_config(path, overrides)
    with tempfile.TemporaryDirectory(prefix="recap-run-") as local:  # a run on an object store: a local copy
        copy = Path(local) / RUN_CONFIG
        copy.write_bytes(path.read_bytes())
        return load_recap_config(copy, overrides)


def checkpoint_of(args: argparse.Namespace, default: str | None = None) -> str:
    """--checkpoint, else --run's save_dir (its latest checkpoint), else `default`; an error when none applies."""
    if args.checkpoint is not None:
        return args.checkpoint
    if args.run is not None:
        return args.run
    if default is None:
        raise SystemExit("--checkpoint is required with --config (or use --run SAVE_DIR)")
    return default


def source_arguments(args: argparse.Namespace) -> list[str]:
    """The --config/--run and --checkpoint arguments again, for the workers of a launcher."""
    out = ["--run", args.run] if args.run is not None else ["--config", args.config]
    if args.checkpoint is not None:
        out += ["--checkpoint", args.checkpoint]
    return out
