"""Checking the configured columns against the parquet files' schemas before any training starts."""

from __future__ import annotations

import pyarrow as pa

from core.log import get_logger
from projects.home.recap.data.columns import check_labels
from projects.home.recap.data.config import DataConfig, DatasetConfig
from projects.home.recap.data.errors import DataError
from projects.home.recap.data.files import ScannedDataset, scan_dataset
from projects.home.recap.data.layout import BatchLayout, ColumnRole, build_layout
from projects.home.recap.data.list_checks import HISTORY_VALUES, history_type_problem, is_id_type

__all__ = ["check_schema", "detect_oracle", "scan_labels", "validate_dataset", "validate_scanned"]

# Label scans up front stop at this many rows: larger sets have their labels checked as batches are read.
LABEL_SCAN_MAX_ROWS = 20_000_000

logger = get_logger(__name__)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_measure(t: pa.DataType) -> bool:
    # Decimals (money columns as Spark and databases write them) are read as float64, then float32.
    return _is_number(t) or pa.types.is_decimal(t)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_boolean(t)


_VALUE_CHECKS = {
    "continuous": (_is_measure, "numbers"),
    "binary": (_is_number, "0/1 numbers or booleans"),
    "discrete": (_is_int, "integers (encode categories as integer ids, or read a string column as a sparse "
                              "feature with a large embedding table: strings are hashed)"),
    "sparse": (is_id_type, "integer or string ids"),
    "embeddings": (pa.types.is_floating, "floats"),
    "label": (_is_number, "0/1 numbers or booleans"),
    "weight": (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "numbers"),
    "oracle": (pa.types.is_floating, "floats (probabilities)"),
    **HISTORY_VALUES,
    "candidate": (is_id_type, "integer or string ids"),
}
_SEQUENCE_KINDS = ("sequence_id", "sequence_action", "sequence_continuous")


def check_column_type(role: ColumnRole, dtype: pa.DataType) -> str | None:
    """Why a parquet type cannot feed a configured column, or None when it can."""
    if role.kind == "id":
        return None
    is_value, wanted = _VALUE_CHECKS[role.kind]
    if role.kind in ("sparse", "candidate"):
        inner = dtype.value_type if _is_list(dtype) else dtype
        return None if is_value(inner) else (f"type {dtype} cannot hold {role.kind} ids: need integer or string ids "
                                             "(int64, string, or a list of them)")
    if role.kind in _SEQUENCE_KINDS:
        # Shared with the standalone scorer (list_checks.py), so both refuse the same columns in the same words.
        return history_type_problem(dtype, role.kind, role.key)
    if role.length is None:
        if _is_list(dtype):
            return f"type {dtype} is a list column but {role.key} declares a scalar column (set its length)"
        return None if is_value(dtype) else f"type {dtype} is not {wanted}"
    if not _is_list(dtype):
        return f"type {dtype} is a scalar column but {role.key} declares a list of length {role.length}"
    if pa.types.is_fixed_size_list(dtype) and dtype.list_size != role.length:
        return f"type {dtype} has length {dtype.list_size} but {role.key} declares length {role.length}"
    return None if is_value(dtype.value_type) else f"type {dtype} does not hold {wanted}"


def check_schema(layout: BatchLayout, schema: pa.Schema, path: str, require_labels: bool = True) -> None:
    """Raise DataError naming the file and column for the first configured column the schema cannot provide."""
    names = set(schema.names)
    for role in layout.roles():
        if role.name not in names:
            if role.kind == "label" and not require_labels:
                continue
            raise DataError(f"missing column (configured as {role.key}); the file has {len(names)} columns: "
                            f"{', '.join(sorted(names)[:20])}{' ...' if len(names) > 20 else ''}", path, role.name)
        problem = check_column_type(role, schema.field(role.name).type)
        if problem:
            suffix = "" if role.key in problem else f" (configured as {role.key})"
            raise DataError(problem + suffix, path, role.name)


def validate_scanned(layout: BatchLayout, scanned: ScannedDataset, require_labels: bool = True) -> None:
    """Check every file's schema and that the dataset has rows."""
    if not scanned.files:
        skipped = f" ({len(scanned.skipped)} corrupt files skipped)" if scanned.skipped else ""
        raise DataError(f"empty dataset: no parquet files found{skipped}", scanned.describe())
    for source in scanned.files:
        check_schema(layout, source.schema, source.path, require_labels)
    if scanned.num_rows == 0:
        raise DataError(f"empty dataset: {len(scanned.files)} files but no rows", scanned.describe())


def detect_oracle(layout: BatchLayout, scanned: ScannedDataset) -> BatchLayout:
    """The layout that also reads the tasks' oracle.<label> columns when every file has all of them, else `layout`.

    Some but not all of them (in some or every file) is logged and read as no oracle: metrics need every task's.
    """
    wanted = layout.oracle_candidates()
    lacking: dict[str, int] = {}  # oracle column -> number of files without it
    for source in scanned.files:
        names = set(source.schema.names)
        for role in wanted:
            if role.name not in names:
                lacking[role.name] = lacking.get(role.name, 0) + 1
    num_files = len(scanned.files)
    if not wanted or all(lacking.get(r.name, 0) == num_files for r in wanted):
        return layout
    if lacking:
        missing = ", ".join(f"{name} (in {count} of {num_files} files)" for name, count in lacking.items())
        logger.info("%s: batches carry no oracle probabilities: some tasks' oracle columns are missing: %s",
                    scanned.describe(), missing)
        return layout
    for source in scanned.files:
        for role in wanted:
            problem = check_column_type(role, source.schema.field(role.name).type)
            if problem:
                raise DataError(f"{problem} (the oracle of {role.key})", source.path, role.name)
    return layout.with_oracle()


def validate_dataset(data: DataConfig, dataset: DatasetConfig, tasks: list[str], require_labels: bool = True) -> None:
    """Check, before training, that every task has a label and every configured column exists with a usable type.

    Raises DataError naming the file and the column (or ValueError for a task without a label in data.tasks).
    """
    layout = build_layout(data, tasks)
    validate_scanned(layout, scan_dataset(dataset.paths, data.ignore_data_errors), require_labels)


def scan_labels(layout: BatchLayout, scanned: ScannedDataset, max_rows: int = LABEL_SCAN_MAX_ROWS) -> int:
    """Read only the label columns of every file and raise DataError (file, column) for a null label or one
    outside {0, 1}, so a bad validation set stops a run before its first step rather than at its first evaluation.
    Returns the rows scanned (0 for a dataset over max_rows, whose labels are checked as it is read)."""
    if scanned.num_rows > max_rows:
        return 0
    for source in scanned.files:
        present = [r.name for r in layout.labels if r.name in source.schema.names]
        if present:
            check_labels(layout, source.open().read(columns=present), source.path)
    return scanned.num_rows
