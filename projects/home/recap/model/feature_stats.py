"""Read the continuous-feature statistics written by `recap data stats` (for zscore_log featurization).

Format: {"columns": [...], "mean": [C], "std": [C], "count": N, "transform": "signed_log1p"}: mean and std of
sign(x) * log1p(|x|) for each of the C continuous values, in schema order. `columns` lists the schema's continuous
column names (a list column once), or one name per value starting with its column's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.config import ConfigError
from projects.home.recap.data.config import FeatureSchema

_KEY = "model.featurization.zscore_log.stats_path"


def _columns_match(columns: list[str], schema: FeatureSchema) -> bool:
    names = [c.name for c in schema.continuous]
    if columns == names:
        return True
    per_value = [c.name for c in schema.continuous for _ in range(c.width)]
    return len(columns) == len(per_value) and all(str(c).startswith(n) for c, n in zip(columns, per_value))


def check_stats_columns(stats: dict, schema: FeatureSchema, path: Path, key: str) -> None:
    """A ConfigError when the file's `columns` (if any) are not the schema's continuous columns, named once per
    column or once per value."""
    columns = stats.get("columns")
    if columns is not None and not _columns_match(list(columns), schema):
        raise ConfigError(
            f"{key}: {path}: columns {columns} do not match the schema's continuous columns "
            f"{[c.name for c in schema.continuous]}; recompute the statistics for this schema"
        )


def read_stats_file(path: Path, key: str) -> object:
    """The parsed JSON of a `recap data stats` file; a missing or unparsable file is a ConfigError naming the config
    key and the path."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} not found; write it with `recap data stats --output {path}`") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not valid JSON: {exc}") from None


def load_feature_stats(path: str | Path, schema: FeatureSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 tensors of width schema.num_continuous; errors name the file and what is wrong."""
    path = Path(path)
    stats = read_stats_file(path, _KEY)
    if not isinstance(stats, dict):
        raise ConfigError(f"{_KEY}: {path}: expected a JSON object with mean and std")
    missing = [k for k in ("mean", "std") if k not in stats]
    if missing:
        raise ConfigError(f"{_KEY}: {path}: missing {', '.join(missing)}")
    transform = stats.get("transform", "signed_log1p")
    if transform != "signed_log1p":
        raise ConfigError(
            f"{_KEY}: {path}: statistics are of transform {transform!r}; zscore_log needs 'signed_log1p'"
        )
    width = schema.num_continuous
    for key in ("mean", "std"):
        if not isinstance(stats[key], list) or len(stats[key]) != width:
            got = len(stats[key]) if isinstance(stats[key], list) else type(stats[key]).__name__
            raise ConfigError(
                f"{_KEY}: {path}: {key} has {got} values but the feature schema has {width} continuous values; "
                "recompute the statistics for this schema"
            )
    check_stats_columns(stats, schema, path, _KEY)
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
        raise ConfigError(f"{_KEY}: {path}: mean and std must be finite and std non-negative")
    return mean, std
