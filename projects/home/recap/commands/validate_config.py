"""`recap validate-config FILE`: print the fully resolved config as YAML, or its errors (exit status 1)."""

from __future__ import annotations

import argparse

from core.config import dump_yaml
from projects.home.recap.schema import load_recap_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set training.num_train_steps=100")


def run(args: argparse.Namespace) -> int:
    config = load_recap_config(args.config, args.overrides)
    print(dump_yaml(config), end="")
    return 0
