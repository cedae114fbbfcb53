"""Score a parquet file with a recap serving artifact, using only torch, numpy and pyarrow.

    python score_example.py ARTIFACT_DIR input.parquet --output predictions.parquet [--batch-size 4096]

The artifact directory holds model.pt2 and metadata.json (written by `recap export`). The columns of the input file
are turned into the model's input tensors the way the training data loader does: list columns flattened in the
order metadata.json gives, nulls filled (continuous NaN, others 0), a null sparse or history list counted as empty,
and the loader's own checks of list columns (list_checks.py: history columns of the wrong type, a null inside a
list, history lists of unequal lengths, action ids outside [0, num_actions) are errors naming the column).

With engagement histories the program scores requests: consecutive rows whose history lists are identical (the
candidates of one request, as the loader's files hold them) become one request, whose history is encoded once for
all its candidates (exactly the scores of row by row). A serving system that holds one user's history and C
candidates builds the inputs of that one request with `request_inputs`:

    model, metadata = load_artifact("serving/exp")
    user = pq.read_table("request.parquet").slice(0, 1)        # the history lists, from one row
    candidates = pq.read_table("request.parquet")              # C rows: the candidates' features
    scores = model(*request_inputs(user, candidates, metadata))

`check_inputs(inputs, metadata)` names an input of the wrong dtype (the program itself only says "dtype mismatch").

The output
holds the id columns listed in the metadata (when present in the file), then, per task, the columns `<task>.logit`,
`<task>.probability` and `<task>.calibrated` (the names `recap predict` writes), and `score` when the model has a
ranking score.

This file deliberately does not import the recap package: copy it, with list_checks.py beside it, next to a serving
system as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch


def _load_list_checks():
    """The loader's list-column checks: from the recap package in the repository, else the copy `recap export`
    writes next to this file (one implementation, so the scorer cannot drift from the loader)."""
    try:
        from projects.home.recap.data import list_checks
    except ImportError:
        path = Path(__file__).with_name("list_checks.py")
        spec = importlib.util.spec_from_file_location("recap_list_checks", path)
        if spec is None or not path.is_file():
            raise ImportError(f"{path} is missing: it ships with score_example.py in a recap export") from None
        list_checks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(list_checks)
    return list_checks


list_checks = _load_list_checks()

FORMAT = "recap-serving/2"
# Version 1 took one history per row and no request_of_row; without histories its inputs are version 2's.
OLD_FORMATS = ("recap-serving/1",)
DENSE_INPUTS = ("continuous", "binary", "discrete", "embeddings")
_NUMPY = {"float32": np.float32, "int64": np.int64}


def load_artifact(directory: str | Path) -> tuple[torch.nn.Module, dict]:
    """(the exported model as a callable module, its metadata) of an artifact directory."""
    directory = Path(directory)
    metadata = json.loads((directory / "metadata.json").read_text())
    check_format(metadata, f"{directory}/metadata.json")
    return torch.export.load(directory / metadata["model_file"]).module(), metadata


def check_format(metadata: dict, where: str) -> None:
    """Refuse an artifact this scorer cannot feed, saying why: an unknown format, or a version 1 artifact with
    histories (one history per row and no request_of_row input)."""
    found = metadata.get("format")
    if found == FORMAT:
        return
    histories = any(spec.get("name") == "histories" for spec in metadata.get("inputs", []))
    if found in OLD_FORMATS and not histories:
        return
    if found in OLD_FORMATS:
        raise ValueError(f"{where}: format {found!r} takes one history per row and no request_of_row; this scorer "
                         f"reads {FORMAT!r} (histories one per request, and request_of_row). Re-export the "
                         "checkpoint with this version's `recap export`, or score with the score_example.py that "
                         "came with the artifact")
    raise ValueError(f"{where}: format {found!r}, expected {FORMAT!r}")


def _column(table: pa.Table, name: str, where: str) -> pa.Array:
    if name not in table.column_names:
        raise ValueError(f"{where}: column {name!r} is missing")
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _dense(table: pa.Table, spec: dict, where: str) -> np.ndarray:
    """One dense input [rows, width]: the spec's columns side by side, fixed-length lists flattened."""
    dtype = _NUMPY[spec["dtype"]]
    parts = [np.zeros((table.num_rows, 0), dtype=dtype)]
    for col in spec["columns"]:
        arr = _column(table, col["name"], where)
        width = col["length"] or 1
        if list_checks.is_list(arr):
            if arr.null_count:
                raise ValueError(f"{where}: column {col['name']!r} has {arr.null_count} null lists")
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(arr) and (lengths != width).any():
                raise ValueError(f"{where}: column {col['name']!r} has lists of length {lengths.min()}..{lengths.max()}, "
                                 f"the model reads {width}")
            arr = arr.flatten()
        elif width != 1:
            raise ValueError(f"{where}: column {col['name']!r} is not a list column of length {width}")
        if pa.types.is_decimal(arr.type):
            arr = pc.cast(arr, pa.float64())  # as the loader reads decimal columns
        if arr.null_count and spec["missing_value"] != "NaN":
            arr = pc.fill_null(arr, 0)
        # Nulls left in a numeric column become NaN here (continuous features).
        values = arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        parts.append(values.reshape(table.num_rows, width))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _jagged(table: pa.Table, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of a sparse id column; a scalar column gives one id per row, and a null (scalar or list)
    is a row without ids, as in training."""
    arr = _column(table, name, where)
    if not list_checks.is_id_type(arr.type.value_type if list_checks.is_list(arr) else arr.type):
        raise ValueError(f"{where}: column {name!r}: type {arr.type} cannot hold sparse ids: need integer or string "
                         "ids (int64, string, or a list of them)")
    if not list_checks.is_list(arr):
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        return list_checks.id_values(arr.drop_null()), valid.astype(np.int64)
    problem = list_checks.null_ids_problem(arr)
    if problem:
        raise ValueError(f"{where}: column {name!r}: {problem}")
    return list_checks.id_values(arr.flatten()), list_checks.list_lengths(arr)


def _row_inputs(table: pa.Table, specs: dict, where: str) -> tuple:
    """The per-row inputs (dense, sparse values, sparse lengths) for the rows of `table`."""
    dense = [torch.from_numpy(_dense(table, specs[name], where)) for name in DENSE_INPUTS]
    values, lengths = [], []
    for name in specs["sparse_values"]["features"]:
        v, n = _jagged(table, name, where)
        values.append(torch.from_numpy(np.require(v, requirements="W")))  # a view of arrow's memory is read-only
        lengths.append(torch.from_numpy(n))
    return (*dense, values, lengths)


def table_inputs(table: pa.Table, metadata: dict, where: str = "input", share_requests: bool = True) -> tuple:
    """The model's positional inputs for the rows of `table`; with histories also the histories and
    request_of_row: one history per run of consecutive rows with identical history lists (all groups together)
    with `share_requests`, else one per row."""
    specs = {spec["name"]: spec for spec in metadata["inputs"]}
    rows = _row_inputs(table, specs, where)
    if "histories" not in specs:
        return rows
    histories: dict[str, torch.Tensor] = {}
    candidates: dict[str, torch.Tensor] = {}
    for group in specs["histories"]["groups"].values():
        histories.update(_history(table, group, where))
        candidates.update(_candidates(table, group, where))
    first, request_of_row = _requests(histories, share_requests)
    histories = {k: v[first] for k, v in histories.items()}
    return (*rows, {**histories, **candidates}, request_of_row)


def request_inputs(history: pa.Table, candidates: pa.Table, metadata: dict, where: str = "input") -> tuple:
    """The model's inputs scoring ONE request: the user's history lists read from the single row of `history`,
    every other input (features and candidate ids) from the C rows of `candidates`, request_of_row all 0. The
    history is encoded once for the C candidates."""
    specs = {spec["name"]: spec for spec in metadata["inputs"]}
    if "histories" not in specs:
        raise ValueError("this model reads no history: score the candidates' rows with table_inputs")
    if history.num_rows != 1:
        raise ValueError(f"{where}: a request has one history: got {history.num_rows} history rows")
    histories: dict[str, torch.Tensor] = {}
    for group in specs["histories"]["groups"].values():
        histories.update(_history(history, group, where))
        histories.update(_candidates(candidates, group, where))
    request_of_row = torch.zeros(candidates.num_rows, dtype=torch.int64)
    return (*_row_inputs(candidates, specs, where), histories, request_of_row)


def _requests(histories: dict[str, torch.Tensor], share_requests: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each request [R], request of each row [N]) for per-row padded histories: runs of consecutive
    rows whose history tensors are all identical, or one request per row."""
    arrays = [t.reshape(t.shape[0], -1).numpy() for t in histories.values()]
    rows = arrays[0].shape[0]
    starts = np.ones(rows, dtype=bool)
    if share_requests and rows > 1:
        same = np.ones(rows - 1, dtype=bool)
        for a in arrays:
            same &= (a[1:] == a[:-1]).all(axis=1)
        starts[1:] = ~same
    return torch.from_numpy(np.flatnonzero(starts)), torch.from_numpy(np.cumsum(starts) - 1)


def _padded(arr: pa.Array, keep: np.ndarray, positions: np.ndarray, rows: np.ndarray, shape: tuple,
            dtype) -> np.ndarray:
    """Values of a history list column in [rows, positions] of a zero [N, max_length] array (ids as int64 ids, strings
    hashed as the loader hashes them)."""
    out = np.zeros(shape, dtype=dtype)
    values = arr.flatten()
    flat = (list_checks.id_values(values) if dtype == np.int64
            else values.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
    out[rows, positions] = flat[keep]
    return out


def _history(table: pa.Table, group: dict, where: str) -> dict[str, torch.Tensor]:
    """One history group's padded history tensors, one per row of `table`: each row's max_length most recent
    items, most recent first."""
    n, length = table.num_rows, group["max_length"]
    list_columns = {key: name for key, name in group["columns"].items() if "/candidate:" not in key}
    prefix = next(iter(group["tensors"])).split("/")[0] + "/"
    spec = group["tensors"].get(prefix + "continuous")
    # Ids, actions, continuous: the loader's order, so a problem is reported on the same column.
    names = [*list_columns.values(), *(spec["columns"] if spec is not None else [])]
    kinds = [*("sequence_action" if key == prefix + "actions" else "sequence_id" for key in list_columns),
             *("sequence_continuous" for _ in (spec["columns"] if spec is not None else []))]
    for name, kind in zip(names, kinds):
        problem = list_checks.history_type_problem(_column(table, name, where).type, kind,
                                                   f"a list column of history group {prefix[:-1]!r}")
        if problem:
            raise ValueError(f"{where}: column {name!r}: {problem}")
    problem = list_checks.history_problem([(c, _column(table, c, where)) for c in names], prefix[:-1])
    if problem:
        raise ValueError(f"{where}: column {problem[0]!r}: {problem[1]}")
    actions = list_columns.get(prefix + "actions")
    if actions is not None and group.get("num_actions") is not None:
        problem = list_checks.action_ids_problem(_column(table, actions, where).flatten(), group["num_actions"],
                                                 prefix[:-1])
        if problem:
            raise ValueError(f"{where}: column {actions!r}: {problem}")
    counts = list_checks.list_lengths(_column(table, names[0], where))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    rows = np.repeat(np.arange(n), counts)
    # Index within the row counted from the most recent item.
    recent = within if group["most_recent"] == "first" else np.repeat(counts, counts) - 1 - within
    keep = recent < length
    rows, positions = rows[keep], recent[keep]
    out = {}
    mask = np.zeros((n, length), dtype=bool)
    mask[rows, positions] = True
    out[prefix + "mask"] = torch.from_numpy(mask)
    for key, name in list_columns.items():
        out[key] = torch.from_numpy(_padded(_column(table, name, where), keep, positions, rows, (n, length), np.int64))
    if spec is not None:
        parts = [_padded(_column(table, c, where), keep, positions, rows, (n, length), np.float32)
                 for c in spec["columns"]]
        out[prefix + "continuous"] = torch.from_numpy(np.stack(parts, axis=-1))
    return out


def _candidates(table: pa.Table, group: dict, where: str) -> dict[str, torch.Tensor]:
    """One history group's candidate ids [rows of `table`]: the scalar, or a list's first id (0 when null or
    empty), as the loader reads them."""
    n, out = table.num_rows, {}
    for key, name in group["columns"].items():
        if "/candidate:" in key:
            arr = _column(table, name, where)
            problem = list_checks.candidate_type_problem(arr.type)
            if problem:
                raise ValueError(f"{where}: column {name!r}: {problem}")
            if list_checks.is_list(arr):
                v, c = _jagged(table, name, where)
                ids = np.zeros(n, dtype=np.int64)
                has = c > 0
                ids[has] = v[np.concatenate([[0], np.cumsum(c)[:-1]])[has]]
            else:
                ids = list_checks.scalar_ids(arr)
            out[key] = torch.from_numpy(np.require(ids, requirements="W"))
    return out


def check_inputs(inputs: tuple, metadata: dict) -> None:
    """Raise ValueError naming the input (e.g. histories['history/id:history.author_id']) whose dtype is not the one
    metadata.json gives, or a history tensor that is missing: the program itself only says "dtype mismatch". A float
    id would otherwise have to be cast by the caller, which is where ids go wrong."""
    for spec, value in zip(metadata["inputs"], inputs, strict=True):
        name = spec["name"]
        if name == "histories":
            for group in spec["groups"].values():
                for key, tensor_spec in group["tensors"].items():
                    if key not in value:
                        raise ValueError(f"histories[{key!r}] is missing")
                    _check_dtype(value[key], tensor_spec["dtype"], f"histories[{key!r}]")
        elif "features" in spec:
            for feature, tensor in zip(spec["features"], value, strict=True):
                _check_dtype(tensor, spec["dtype"], f"{name}[{feature!r}]")
        else:
            _check_dtype(value, spec["dtype"], name)


def _check_dtype(tensor: torch.Tensor, dtype: str, name: str) -> None:
    if tensor.dtype != getattr(torch, dtype):
        raise ValueError(f"input {name} holds {tensor.dtype}; the model takes {dtype}")


# Per-task outputs of the program -> the suffix of their columns, `<task>.<suffix>`: the names `recap predict` writes
# (`<task>.probability`, `<task>.calibrated`), so the two scorers' files can be read by the same code.
COLUMN_SUFFIXES = {"logits": "logit", "probabilities": "probability", "calibrated_probabilities": "calibrated"}


def output_columns(metadata: dict) -> list[tuple[str, str, int | None]]:
    """(column name, program output, task index or None) of a predictions file, in column order: per task its logit,
    probability and calibrated probability, then `score` (one value per row) when the model has one."""
    per_task = [key for key, shape in metadata["outputs"].items() if len(shape) == 2]
    per_row = [key for key, shape in metadata["outputs"].items() if len(shape) == 1]
    columns = [(f"{task}.{COLUMN_SUFFIXES.get(key, key)}", key, j)
               for j, task in enumerate(metadata["tasks"]) for key in per_task]
    return columns + [(key, key, None) for key in per_row]


def score_file(artifact: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 4096) -> int:
    """Score every row of a parquet file into a predictions parquet file; returns the number of rows."""
    model, metadata = load_artifact(artifact)
    outputs = output_columns(metadata)
    source = pq.ParquetFile(input_path)
    ids = [c for c in metadata["id_columns"] if c in source.schema_arrow.names]
    writer = None
    rows = 0
    try:
        for batch in source.iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            inputs = table_inputs(table, metadata, str(input_path))
            check_inputs(inputs, metadata)
            with torch.inference_mode():
                scores = model(*inputs)
            columns = {c: table.column(c) for c in ids}
            for name, key, j in outputs:
                values = scores[key].numpy()
                columns[name] = pa.array(values if j is None else values[:, j])
            out = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(output_path, out.schema)
            writer.write_table(out)
            rows += table.num_rows
        if writer is None:
            empty = {c: pa.array([], type=source.schema_arrow.field(c).type) for c in ids}
            empty.update({name: pa.array([], type=pa.float32()) for name, _, _ in outputs})
            pq.write_table(pa.table(empty), output_path)
    finally:
        if writer is not None:
            writer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="score a parquet file with a recap serving artifact", allow_abbrev=False)
    parser.add_argument("artifact", help="artifact directory (model.pt2, metadata.json)")
    parser.add_argument("input", help="parquet file with the model's feature columns")
    parser.add_argument("--output", required=True, help="predictions parquet file to write")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)
    rows = score_file(args.artifact, args.input, args.output, args.batch_size)
    print(f"scored {rows} rows into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
