"""The splits as in-memory arrays for the plain references: read with pyarrow from the paths of our config, so every
model sees the same rows.

Categorical inputs are the config's discrete columns and its scalar sparse columns (one embedding table each); a
sparse list column becomes a multi-hot bag (padded, the pad being one id past the column's vocabulary); continuous
columns are standardised with the train split's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import resolve_paths
from projects.home.recap.data.layout import ORACLE_PREFIX
from projects.home.recap.schema import RecapConfig


@dataclass
class SplitArrays:
    """One split: categorical ids [N, C], one padded id matrix per bag column [N, L_b], standardised continuous
    values [N, K], labels [N, T] and, when every file has them, the oracle probabilities [N, T]."""

    categorical: np.ndarray
    bags: list[np.ndarray]
    continuous: np.ndarray
    labels: np.ndarray
    oracle: np.ndarray | None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ReferenceData:
    """The three splits and what the reference model needs to size its tables."""

    train: SplitArrays
    validation: SplitArrays
    test: SplitArrays
    categorical_names: list[str]
    bag_names: list[str]
    continuous_names: list[str]
    categorical_sizes: list[int]
    bag_sizes: list[int]  # rows of each bag table, the pad included
    tasks: list[str]


def _read(paths: list[str], columns: list[str]) -> tuple[pa.Table, str]:
    """The columns of every parquet file under paths, concatenated in file order; and the first file's name."""
    files = resolve_paths(paths)
    tables = []
    for fs, path in files:
        try:
            tables.append(pq.read_table(path, filesystem=fs, columns=columns))
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise DataError(f"cannot read the columns {columns} for the plain references ({exc})", path) from None
    return pa.concat_tables(tables), files[0][1]


def _ids(column: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False).astype(np.int64)
    if values.size and values.min() < 0:
        raise DataError(f"negative id {values.min()}: the references index tables by id", where, name)
    return values


def _padded(column: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, longest], mask [N, longest]) of a list column."""
    lists = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    flat = _ids(pc.list_flatten(lists), name, where)
    ids = np.zeros((len(lengths), max(1, int(lengths.max(initial=0)))), dtype=np.int64)
    mask = np.arange(ids.shape[1]) < lengths[:, None]
    ids[mask] = flat
    return ids, mask


def _is_list(table: pa.Table, name: str) -> bool:
    return pa.types.is_list(table.schema.field(name).type) or pa.types.is_large_list(table.schema.field(name).type)


def _scalar_sparse(config: RecapConfig, table: pa.Table) -> tuple[list[str], list[str]]:
    """The sparse columns split into scalar ids (categorical) and lists (bags); a one-id list counts as scalar."""
    scalar, bags = [], []
    for name in config.data.features.sparse:
        if _is_list(table, name) and pc.max(pc.list_value_length(table.column(name))).as_py() not in (None, 0, 1):
            bags.append(name)
        else:
            scalar.append(name)
    return scalar, bags


def _column_names(config: RecapConfig) -> tuple[list[str], list[str], list[str]]:
    features = config.data.features
    for kind, specs in (("continuous", features.continuous), ("discrete", features.discrete)):
        for spec in specs:
            if spec.length is not None:
                raise ValueError(f"data.features.{kind}: the plain references read scalar columns only, "
                                 f"{spec.name!r} has length {spec.length}")
    labels = [config.data.tasks[task].label for task in config.model.tasks]
    return [s.name for s in features.discrete], [s.name for s in features.continuous], labels


def _scalar_ids(table: pa.Table, name: str, where: str) -> np.ndarray:
    if _is_list(table, name):
        # A sparse column of one id per row: an empty or null list reads as id 0, as a null discrete value does.
        return _padded(table.column(name), name, where)[0][:, 0]
    return _ids(pc.fill_null(table.column(name), 0), name, where)


def load_reference_data(config: RecapConfig, validation: str = "validation", test: str = "test") -> ReferenceData:
    """Read train, the validation set named `validation` and the one named `test` of the config into arrays."""
    discrete, continuous, labels = _column_names(config)
    sources = {"train": config.data.train, "validation": config.data.validation.get(validation),
               "test": config.data.validation.get(test)}
    keys = {"train": "data.train", "validation": f"data.validation.{validation}", "test": f"data.validation.{test}"}
    missing = [keys[split] for split, dataset in sources.items() if dataset is None]
    if missing:
        raise ValueError(f"the plain references read train, validation and test splits: the config has no "
                         f"{', '.join(missing)}")
    oracle = [ORACLE_PREFIX + label for label in labels]
    raw = {}
    for split, dataset in sources.items():
        schema = pq.read_schema(resolve_paths(dataset.paths)[0][1])
        with_oracle = all(name in schema.names for name in oracle)
        columns = [*discrete, *config.data.features.sparse, *continuous, *labels, *(oracle if with_oracle else [])]
        raw[split] = (*_read(dataset.paths, columns), with_oracle)
    sparse_scalar, bag_names = _scalar_sparse(config, raw["train"][0])
    categorical_names = [*sparse_scalar, *discrete]
    ids = {split: np.stack([_scalar_ids(t, n, where) for n in categorical_names], 1)
           if categorical_names else np.zeros((t.num_rows, 0), np.int64) for split, (t, where, _) in raw.items()}
    bags = {split: [_padded(t.column(n), n, where) for n in bag_names] for split, (t, where, _) in raw.items()}
    categorical_sizes = [int(max(ids[s][:, j].max(initial=0) for s in raw)) + 1 for j in range(len(categorical_names))]
    # Each bag table: every id seen in any split, then one pad row.
    bag_sizes = [int(max(bags[s][b][0].max(initial=0) for s in raw)) + 2 for b in range(len(bag_names))]
    for split in raw:
        for b, (padded, mask) in enumerate(bags[split]):
            padded[~mask] = bag_sizes[b] - 1
    values = {split: np.stack([t.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in continuous], 1)
              if continuous else np.zeros((t.num_rows, 0)) for split, (t, _, _) in raw.items()}
    train_values = np.where(np.isfinite(values["train"]), values["train"], np.nan)
    mean, std = np.nanmean(train_values, 0), np.nanstd(train_values, 0)
    std = np.where(std > 0, std, 1.0)

    def split_arrays(split: str) -> SplitArrays:
        table, _, with_oracle = raw[split]
        z = (values[split] - mean) / std
        return SplitArrays(
            categorical=ids[split],
            bags=[padded for padded, _ in bags[split]],
            continuous=np.where(np.isfinite(z), z, 0.0).astype(np.float32),
            labels=np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in labels], 1).astype(np.float32),
            oracle=np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in oracle], 1).astype(np.float64)
            if with_oracle else None,
        )

    return ReferenceData(train=split_arrays("train"), validation=split_arrays("validation"), test=split_arrays("test"),
                         categorical_names=categorical_names, bag_names=bag_names, continuous_names=continuous,
                         categorical_sizes=categorical_sizes, bag_sizes=bag_sizes, tasks=list(config.model.tasks))
