"""Score a parquet file with a recap serving artifact, using only torch, numpy and pyarrow.

    python score_example.py ARTIFACT_DIR input.parquet --output predictions.parquet [--batch-size 4096]

The artifact directory holds model.pt2 and metadata.json (written by `recap export`). The columns of the input file
are turned into the model's input tensors the way the training data loader does: list columns flattened in the
order metadata.json gives, nulls filled (continuous NaN, others 0), a null sparse list counted as empty. The output
holds the id columns listed in the metadata (when present in the file), then, for each output and task,
a column `<output>.<task>` (e.g. `calibrated_probabilities.fav`), and `score` when the model has a ranking score.

This file deliberately does not import the recap package: copy it next to a serving system as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

FORMAT = "recap-serving/1"
DENSE_INPUTS = ("continuous", "binary", "discrete", "embeddings")
_NUMPY = {"float32": np.float32, "int64": np.int64}


def load_artifact(directory: str | Path) -> tuple[torch.nn.Module, dict]:
    """(the exported model as a callable module, its metadata) of an artifact directory."""
    directory = Path(directory)
    metadata = json.loads((directory / "metadata.json").read_text())
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{directory}/metadata.json: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return torch.export.load(directory / metadata["model_file"]).module(), metadata


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


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
        if _is_list(arr.type):
            if arr.null_count:
                raise ValueError(f"{where}: column {col['name']!r} has {arr.null_count} null lists")
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(arr) and (lengths != width).any():
                raise ValueError(f"{where}: column {col['name']!r} has lists of length {lengths.min()}..{lengths.max()}, "
                                 f"the model reads {width}")
            arr = arr.flatten()
        elif width != 1:
            raise ValueError(f"{where}: column {col['name']!r} is not a list column of length {width}")
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
    if not _is_list(arr.type):
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        return arr.drop_null().to_numpy(zero_copy_only=False).astype(np.int64), valid.astype(np.int64)
    lengths = pc.list_value_length(arr)
    lengths = pc.fill_null(lengths, 0) if lengths.null_count else lengths
    values = arr.flatten()
    if values.null_count:
        raise ValueError(f"{where}: column {name!r} has {values.null_count} null ids")
    return (
        values.to_numpy(zero_copy_only=False).astype(np.int64),
        lengths.to_numpy(zero_copy_only=False).astype(np.int64),
    )


def table_inputs(table: pa.Table, metadata: dict, where: str = "input") -> tuple:
    """The model's positional inputs for the rows of `table`."""
    specs = {spec["name"]: spec for spec in metadata["inputs"]}
    dense = [torch.from_numpy(_dense(table, specs[name], where)) for name in DENSE_INPUTS]
    values, lengths = [], []
    for name in specs["sparse_values"]["features"]:
        v, n = _jagged(table, name, where)
        values.append(torch.from_numpy(v))
        lengths.append(torch.from_numpy(n))
    if "histories" not in specs:
        return (*dense, values, lengths)
    histories: dict[str, torch.Tensor] = {}
    for group in specs["histories"]["groups"].values():
        histories.update(_history(table, group, where))
    return (*dense, values, lengths, histories)


def _padded(arr: pa.Array, keep: np.ndarray, positions: np.ndarray, rows: np.ndarray, shape: tuple,
            dtype) -> np.ndarray:
    out = np.zeros(shape, dtype=dtype)
    out[rows, positions] = arr.flatten().to_numpy(zero_copy_only=False)[keep].astype(dtype, copy=False)
    return out


def _history(table: pa.Table, group: dict, where: str) -> dict[str, torch.Tensor]:
    """One history group's padded inputs: each row's max_length most recent items, most recent first."""
    n, length = table.num_rows, group["max_length"]
    list_columns = {key: name for key, name in group["columns"].items() if "/candidate:" not in key}
    first = _column(table, next(iter(list_columns.values())), where)
    counts = pc.fill_null(pc.list_value_length(first), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    rows = np.repeat(np.arange(n), counts)
    # Index within the row counted from the most recent item.
    recent = within if group["most_recent"] == "first" else np.repeat(counts, counts) - 1 - within
    keep = recent < length
    rows, positions = rows[keep], recent[keep]
    out = {}
    prefix = next(iter(group["tensors"])).split("/")[0] + "/"
    mask = np.zeros((n, length), dtype=bool)
    mask[rows, positions] = True
    out[prefix + "mask"] = torch.from_numpy(mask)
    for key, name in list_columns.items():
        arr = _column(table, name, where)
        if pc.list_value_length(arr).to_numpy(zero_copy_only=False).tolist() != counts.tolist():
            raise ValueError(f"{where}: column {name!r} has other list lengths than {first}")
        out[key] = torch.from_numpy(_padded(arr, keep, positions, rows, (n, length), np.int64))
    spec = group["tensors"].get(prefix + "continuous")
    if spec is not None:
        parts = [_padded(_column(table, c, where), keep, positions, rows, (n, length), np.float32)
                 for c in spec["columns"]]
        out[prefix + "continuous"] = torch.from_numpy(np.stack(parts, axis=-1))
    for key, name in group["columns"].items():
        if "/candidate:" in key:
            arr = _column(table, name, where)
            if _is_list(arr.type):
                v, c = _jagged(table, name, where)
                ids = np.zeros(n, dtype=np.int64)
                has = c > 0
                ids[has] = v[np.concatenate([[0], np.cumsum(c)[:-1]])[has]]
            else:
                ids = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64)
            out[key] = torch.from_numpy(ids)
    return out


def score_file(artifact: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 4096) -> int:
    """Score every row of a parquet file into a predictions parquet file; returns the number of rows."""
    model, metadata = load_artifact(artifact)
    tasks = metadata["tasks"]
    outputs = list(metadata["outputs"])
    source = pq.ParquetFile(input_path)
    ids = [c for c in metadata["id_columns"] if c in source.schema_arrow.names]
    writer = None
    rows = 0
    try:
        for batch in source.iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            with torch.inference_mode():
                scores = model(*table_inputs(table, metadata, str(input_path)))
            columns = {c: table.column(c) for c in ids}
            for key in outputs:
                matrix = scores[key].numpy()
                if matrix.ndim == 1:  # one value per row (the ranking score)
                    columns[key] = pa.array(matrix)
                    continue
                for j, task in enumerate(tasks):
                    columns[f"{key}.{task}"] = pa.array(matrix[:, j])
            out = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(output_path, out.schema)
            writer.write_table(out)
            rows += table.num_rows
        if writer is None:
            empty = {c: pa.array([], type=source.schema_arrow.field(c).type) for c in ids}
            for key in outputs:
                names = [key] if len(metadata["outputs"][key]) == 1 else [f"{key}.{t}" for t in tasks]
                empty.update({name: pa.array([], type=pa.float32()) for name in names})
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
