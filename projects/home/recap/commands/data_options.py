"""Options the data commands share: which of the config's datasets to read (--dataset)."""

from __future__ import annotations

import argparse

from projects.home.recap.data.config import DataConfig, DatasetConfig


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="train", help="'train' or a name in data.validation (default: train)")


def chosen_dataset(data: DataConfig, name: str) -> DatasetConfig:
    """data.train for "train", else the validation set of that name; an unknown name exits naming the known ones."""
    dataset = data.train if name == "train" else data.validation.get(name)
    if dataset is None:
        raise SystemExit(f"--dataset {name}: not configured (train, {', '.join(data.validation)})")
    return dataset
