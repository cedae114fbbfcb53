"""Read the quantile bin boundaries written by `recap data stats` for model.numeric_embeddings.

The statistics file holds "boundaries": one sorted list per continuous value in schema order (a list column's
slots one after another), with "columns" (and "widths") naming the schema's continuous columns.
"""

from __future__ import annotations

import math
from pathlib import Path

from common.numeric_embeddings import thin_boundaries
from core.config import ConfigError
from projects.home.recap.data.config import FeatureSchema
from projects.home.recap.model.feature_stats import check_stats_columns, read_stats_file

_KEY = "model.numeric_embeddings.stats_path"


def load_boundaries(
    path: str | Path, schema: FeatureSchema, features: list[str] | None, max_bins: int
) -> tuple[list[int], list[list[float]]]:
    """(columns, boundaries): the continuous-tensor index of each encoded value of `features` (all continuous
    columns if None) and its boundaries thinned to at most max_bins bins; errors name the file and the feature."""
    path = Path(path)
    stats = read_stats_file(path, _KEY)
    if not isinstance(stats, dict) or "boundaries" not in stats:
        raise ConfigError(
            f"{_KEY}: {path} holds no 'boundaries' (bin boundaries); rewrite it with `recap data stats`"
        )
    names = [c.name for c in schema.continuous]
    widths = [c.width for c in schema.continuous]
    check_stats_columns(stats, schema, path, _KEY)
    if "widths" in stats and list(stats["widths"]) != widths:
        raise ConfigError(f"{_KEY}: {path}: widths {stats['widths']} are not the schema's continuous widths {widths}")
    all_boundaries = stats["boundaries"]
    if not isinstance(all_boundaries, list) or len(all_boundaries) != schema.num_continuous:
        got = len(all_boundaries) if isinstance(all_boundaries, list) else type(all_boundaries).__name__
        raise ConfigError(
            f"{_KEY}: {path}: boundaries has {got} entries but the feature schema has {schema.num_continuous} "
            "continuous values; recompute the statistics for this schema"
        )
    out_columns: list[int] = []
    out_boundaries: list[list[float]] = []
    for name in features if features is not None else names:
        start, width = schema.continuous_span(name)
        for slot in range(width):
            index = start + slot
            values = all_boundaries[index]
            where = f"feature {name!r}" + (f" slot {slot}" if width > 1 else "")
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                raise ConfigError(f"{_KEY}: {path}: {where}: boundaries must be a list of numbers")
            if not all(math.isfinite(v) for v in values) or any(b <= a for a, b in zip(values, values[1:])):
                raise ConfigError(f"{_KEY}: {path}: {where}: boundaries must be finite and strictly increasing")
            if len(values) < 2:
                raise ConfigError(
                    f"{_KEY}: {path}: {where} has {len(values)} distinct finite value(s) in the statistics, so no "
                    "bins; leave it out of model.numeric_embeddings.features"
                )
            out_columns.append(index)
            out_boundaries.append(thin_boundaries(values, max_bins))
    return out_columns, out_boundaries
