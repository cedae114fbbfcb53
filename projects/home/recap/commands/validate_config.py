"""`recap validate-config FILE [--check]`: print the fully resolved config as YAML, or its errors (exit status 1).
With --check, also build the model (on the meta device: statistics files are read, no weights are allocated), check
that each large table's placement can train on the training device, and check every dataset's files against the
feature schema, as training would before its first step."""

from __future__ import annotations

import argparse

from core.config import dump_yaml
from projects.home.recap.schema import load_recap_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set training.num_train_steps=100")
    parser.add_argument("--check", action="store_true",
                        help="also build the model and check every dataset's files against the schema")


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)
    print(dump_yaml(config), end="")
    if not args.check:
        return 0
    import sys

    from core.distributed import resolve_device
    from projects.home.recap.data.errors import DataError
    from projects.home.recap.data.validation import validate_dataset
    from projects.home.recap.model.factory import build_model
    from projects.home.recap.model.tables import table_constraints

    build_model(config, sparse_device="meta")
    # Each table's pinned placement must be able to train with its optimizer settings on the training device.
    table_constraints(config, resolve_device(config.training.device, 0).type)
    tasks = list(config.model.tasks)
    datasets = {"data.train": config.data.train} if config.data.train is not None else {}
    datasets.update({f"data.validation.{name}": d for name, d in config.data.validation.items()})
    for key, dataset in datasets.items():
        try:
            validate_dataset(config.data, dataset, tasks)
        except DataError as exc:
            print(f"recap validate-config: {key}: {exc}", file=sys.stderr)
            return 1
    print(f"# checked: the model builds; {len(datasets)} dataset(s) match the schema", file=sys.stderr)
    return 0
