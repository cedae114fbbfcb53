"""Distinct ids per large embedding table, to size the tables (`recap data ids`).

A hashed table of M rows holding D distinct ids puts an id in a row some other id also uses with probability
1 - (1 - 1/M)^(D-1), about 1 - exp(-D/M): 63% at M = D, 22% at M = 4D, 6% at M = 16D. The distinct count comes from
a K-minimum-values sketch of the ids (exact up to K distinct ids, about 1/sqrt(K) relative error beyond), so any
number of rows is read in one pass with bounded memory; string ids are counted as the loader hashes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from common.sparse_embeddings import LargeTableSpec
from projects.home.recap.data.arrow_columns import column_array, jagged_ids
from projects.home.recap.data.files import scan_dataset
from projects.home.recap.data.list_checks import is_list
from projects.home.recap.model.factory import large_table_specs
from projects.home.recap.schema import RecapConfig

SKETCH_SIZE = 8192  # relative error about 1.1% beyond this many distinct ids


def _spread(ids: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mix (splitmix64's finalizer) of int64 ids: consecutive ids land uniformly in [0, 2^64)."""
    x = ids.astype(np.int64, copy=False).view(np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@dataclass
class DistinctIds:
    """The K smallest mixed values of the ids seen: their count while under K, else (K - 1) / (K-th smallest / 2^64)."""

    k: int = SKETCH_SIZE
    smallest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    ids: int = 0

    def add(self, ids: np.ndarray) -> None:
        self.ids += len(ids)
        mixed = _spread(ids)
        if len(self.smallest) == self.k:
            mixed = mixed[mixed < self.smallest[-1]]
        self.smallest = np.union1d(self.smallest, mixed)[: self.k]

    def estimate(self) -> float:
        if len(self.smallest) < self.k:
            return float(len(self.smallest))
        return (self.k - 1) / ((float(self.smallest[-1]) + 1.0) / 2.0**64)


def shared_row_share(distinct: float, rows: int) -> float:
    """Expected share of `distinct` hashed ids that share their table row with another id."""
    if distinct <= 1:
        return 0.0
    return 1.0 - math.exp((distinct - 1) * math.log1p(-1.0 / rows)) if rows > 1 else 1.0


def _table_columns(spec: LargeTableSpec) -> list[str]:
    """The data columns whose ids a table holds: its sparse features and the history id columns that read it (their
    candidate columns hold the same kind of ids and are not counted again)."""
    return [*spec.feature_names, *(key.split("/id:", 1)[1] for key in spec.sequence_features if "/id:" in key)]


def count_ids(config: RecapConfig, paths: list[str], max_rows: int | None = None) -> dict:
    """{"rows", "tables": {table: {"columns", "ids", "distinct", "num_embeddings", "id_transform", "shared_rows"}}}
    over the first max_rows rows of the files (all when None). `shared_rows` is the expected share of distinct ids
    sharing a row, for a hashed table; for `mod` with integer ids in [0, num_embeddings) it is exactly 0."""
    specs = {t.name: t for t in large_table_specs(config)}
    tables = {name: _table_columns(spec) for name, spec in specs.items()}
    columns = sorted({c for cs in tables.values() for c in cs})
    sketches = {name: DistinctIds() for name in tables}
    ranges: dict[str, list[int]] = {name: [2**63 - 1, -(2**63)] for name in tables}  # [min, max] of the ids
    text: set[str] = set()
    rows = 0
    scanned = scan_dataset(paths, config.data.ignore_data_errors)
    for source in scanned.files:
        handle = source.open()
        for group_index in range(source.metadata.num_row_groups):
            if max_rows is not None and rows >= max_rows:
                break
            table = handle.read_row_group(group_index, columns=columns)
            if max_rows is not None:
                table = table.slice(0, max_rows - rows)
            rows += table.num_rows
            for name, cols in tables.items():
                for col in cols:
                    arr = column_array(table, col)
                    values = arr.type.value_type if is_list(arr) else arr.type
                    if not pa.types.is_integer(values):
                        text.add(name)
                    ids = jagged_ids(arr)[1]
                    sketches[name].add(ids)
                    if len(ids):
                        lo, hi = ranges[name]
                        ranges[name] = [min(lo, int(ids.min())), max(hi, int(ids.max()))]
    out = {}
    for name, cols in tables.items():
        distinct = sketches[name].estimate()
        spec = specs[name]
        lo, hi = ranges[name]
        exact_mod = spec.id_transform == "mod" and name not in text and lo >= 0 and hi < spec.num_embeddings
        out[name] = {"columns": cols, "ids": sketches[name].ids, "distinct": distinct,
                     "distinct_exact": len(sketches[name].smallest) < sketches[name].k,
                     "strings": name in text, "num_embeddings": spec.num_embeddings,
                     "id_transform": spec.id_transform,
                     "shared_rows": 0.0 if exact_mod else shared_row_share(distinct, spec.num_embeddings)}
    return {"rows": rows, "tables": out}
