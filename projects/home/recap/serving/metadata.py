"""The artifact's metadata.json, written from the config: tasks and outputs, the input layout (columns per input
tensor, the sparse features in call order, the history groups' padded tensors), the id transforms, the calibration
rates and the versions it was exported with; and the check that the config describes the model exported."""

from __future__ import annotations

import importlib.metadata
import math
import platform
from typing import Any

import torch

from common.calibration import log_ratio
from common.sparse_embeddings import HASH_MULTIPLIER
from projects.home.recap.model.multi_task import MultiTaskRankingModel
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.artifact import FORMAT, MODEL_FILE, SCORE, ExportError, served_outputs
from projects.home.recap.serving.build import history_id_tables
from projects.home.recap.serving.serving_model import ServedSparseFeature

ID_TRANSFORMS = {
    "mod": "id mod num_embeddings, non-negative for negative ids (floor modulo)",
    "hash": "h = id * hash_multiplier (int64, wrapping); h = h ^ (h >> 32) (arithmetic shift); h mod num_embeddings "
    "(floor modulo)",
}
_MISSING = {"continuous": "NaN", "binary": "0", "discrete": "0", "embeddings": "0"}
_DTYPES = {"continuous": "float32", "binary": "float32", "discrete": "int64", "embeddings": "float32"}


def check_config(model: MultiTaskRankingModel, config: RecapConfig) -> None:
    """The metadata is written from the config: it must describe this model."""
    tasks = list(model.task_names)
    if tasks != list(config.model.tasks):
        raise ExportError(f"the model's tasks {tasks} are not the config's model.tasks {list(config.model.tasks)}")
    for t, shift in zip(tasks, model.dense.log_ratio.tolist()):
        pos_rate, neg_rate = config.data.calibration_rates(t)
        if not math.isclose(shift, log_ratio(pos_rate, neg_rate), rel_tol=1e-6, abs_tol=1e-6):
            raise ExportError(
                f"task {t!r}: the model calibrates with log ratio {shift:.6g}, but data.tasks.{t} with "
                f"downsampling_correction {config.data.downsampling_correction} (pos_rate {pos_rate}, neg_rate "
                f"{neg_rate}) gives {log_ratio(pos_rate, neg_rate):.6g}; build the model from this config"
            )
    weights = config.model.score_weights()
    got = model.dense.score_weight.tolist() if model.dense.has_score else None
    if (weights is None) != (got is None) or (got is not None and not all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(got, weights))):
        raise ExportError(f"the model scores with weights {got}, but the config's model.scoring gives {weights}; "
                          "build the model from this config")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def serving_metadata(
    model: MultiTaskRankingModel, config: RecapConfig, features: list[ServedSparseFeature], source: str | None
) -> dict[str, Any]:
    """The artifact's metadata.json: tasks, input layout, sparse features, id transforms, calibration, versions."""
    schema = config.data.features
    tasks = list(model.task_names)
    widths = {
        "continuous": schema.num_continuous,
        "binary": schema.num_binary,
        "discrete": schema.num_discrete,
        "embeddings": sum(e.dim for e in schema.embeddings),
    }
    columns = {
        "continuous": [{"name": c.name, "length": c.length} for c in schema.continuous],
        "binary": [{"name": c.name, "length": c.length} for c in schema.binary],
        "discrete": [{"name": c.name, "length": c.length} for c in schema.discrete],
        "embeddings": [{"name": e.name, "length": e.dim} for e in schema.embeddings],
    }
    inputs: list[dict[str, Any]] = [
        {
            "name": kind,
            "dtype": _DTYPES[kind],
            "shape": ["batch", widths[kind]],
            "columns": columns[kind],
            "missing_value": _MISSING[kind],
        }
        for kind in ("continuous", "binary", "discrete", "embeddings")
    ]
    names = [f.name for f in features]
    # Lists with one tensor per feature, in `features` order.
    inputs.append({"name": "sparse_values", "dtype": "int64", "features": names, "shape_per_feature": ["num_ids"]})
    inputs.append({"name": "sparse_lengths", "dtype": "int64", "features": names, "shape_per_feature": ["batch"]})
    if schema.sequences:
        inputs.append({"name": "histories", "groups": {
            name: _history_spec(name, group, config.model.sequences[name].num_actions)
            for name, group in schema.sequences.items()}})
        inputs.append({"name": "request_of_row", "dtype": "int64", "shape": ["batch"],
                       "description": "the request in [0, requests) of each row: its history is row "
                                      "request_of_row[i] of every history tensor (row by row: arange(batch))"})
    position = config.model.position_debias
    return {
        "format": FORMAT,
        "model_file": MODEL_FILE,
        "tasks": tasks,
        "outputs": {key: ["batch", len(tasks)] if key != SCORE else ["batch"] for key in served_outputs(model)},
        "scoring": None if config.model.scoring is None else {
            "weights": dict(zip(tasks, config.model.score_weights(), strict=True)),
            "formula": "score = sum over tasks of weights[task] * calibrated_probabilities[:, task]",
        },
        "inputs": inputs,
        "sparse_features": [
            {
                "name": f.name,
                "table": f.table,
                "num_embeddings": f.num_embeddings,
                "embedding_dim": f.embedding_dim,
                "pooling": f.pooling,
                "id_transform": f.id_transform,
            }
            for f in features
        ],
        # The sharded tables history id columns are looked up in (inside the program, from the raw ids).
        "history_id_tables": history_id_tables(model),
        "id_transforms": dict(ID_TRANSFORMS, hash_multiplier=HASH_MULTIPLIER),
        "ignored_at_serving": [position.feature] if position is not None else [],
        "id_columns": list(schema.ids),
        "calibration": {
            t: dict(zip(("pos_rate", "neg_rate"), config.data.calibration_rates(t), strict=True)) for t in tasks
        },
        "source_checkpoint": source,
        "versions": {
            "torch": torch.__version__,
            "torchrec": _version("torchrec"),
            "recap-ranker": _version("recap-ranker"),
            "python": platform.python_version(),
        },
    }


def _history_spec(name: str, group, num_actions: int | None) -> dict[str, Any]:
    """metadata.json's description of one history group's padded inputs, one per request (the candidate ids one
    per row), and its action types' count, which the scorer checks action ids against as the loader does."""
    length = group.max_length
    tensors = {f"{name}/mask": {"dtype": "bool", "shape": ["requests", length]}}
    columns: dict[str, str] = {}
    for column in group.ids:
        tensors[f"{name}/id:{column.name}"] = {"dtype": "int64", "shape": ["requests", length]}
        columns[f"{name}/id:{column.name}"] = column.name
    if group.actions:
        tensors[f"{name}/actions"] = {"dtype": "int64", "shape": ["requests", length]}
        columns[f"{name}/actions"] = group.actions
    if group.continuous:
        tensors[f"{name}/continuous"] = {"dtype": "float32", "shape": ["requests", length, len(group.continuous)],
                                         "columns": list(group.continuous)}
    for column in group.ids:
        if column.candidate:
            tensors[f"{name}/candidate:{column.name}"] = {"dtype": "int64", "shape": ["batch"]}
            columns[f"{name}/candidate:{column.name}"] = column.candidate
    return {"max_length": length, "most_recent": group.most_recent, "tensors": tensors, "columns": columns,
            "num_actions": num_actions}
