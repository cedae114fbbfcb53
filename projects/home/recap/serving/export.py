"""Export a trained MultiTaskRankingModel to a self-contained serving artifact (torch.export), scored with torch only.

The artifact directory holds
  model.pt2          the ServingRanker exported with torch.export (dynamic batch size and number of ids),
                     loaded with torch.export.load(path).module(); metadata.json is embedded in it too;
  metadata.json      tasks in output order, the input layout (columns per input tensor, sparse feature order),
                     the id transforms, calibration rates and the versions it was exported with;
  README.md          how to score, for this model;
  score_example.py   a standalone scorer of parquet files (torch, numpy and pyarrow only);
  list_checks.py     the training loader's checks of list columns, which score_example.py reads its inputs with.
It is written to a temporary sibling directory and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.batch import RecapBatch
from common.calibration import log_ratio
from common.history import padded_history
from common.sparse_embeddings import HASH_MULTIPLIER  # re-exported for metadata and tests
from projects.home.recap.data import list_checks
from projects.home.recap.model.multi_task import MultiTaskRankingModel
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.serving_model import ServedHistoryColumn, ServedSparseFeature, ServingRanker

# 2: histories one per request, with request_of_row (1: one history per row, no request_of_row).
FORMAT = "recap-serving/2"
MODEL_FILE = "model.pt2"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
SCRIPT_FILE = "score_example.py"
# The loader's own module, shipped rather than copied into the script: the scorer reads lists as training does.
CHECKS_FILE = "list_checks.py"
ARTIFACT_FILES = (MODEL_FILE, METADATA_FILE, README_FILE, SCRIPT_FILE, CHECKS_FILE)
OUTPUTS = ("logits", "probabilities", "calibrated_probabilities")
SCORE = "score"  # [batch], with model.scoring
# The exported program must reproduce the model to this absolute tolerance on the export-time check batch.
TOLERANCE = 1e-5

ID_TRANSFORMS = {
    "mod": "id mod num_embeddings, non-negative for negative ids (floor modulo)",
    "hash": "h = id * hash_multiplier (int64, wrapping); h = h ^ (h >> 32) (arithmetic shift); h mod num_embeddings "
    "(floor modulo)",
}
_MISSING = {"continuous": "NaN", "binary": "0", "discrete": "0", "embeddings": "0"}
_DTYPES = {"continuous": "float32", "binary": "float32", "discrete": "int64", "embeddings": "float32"}


class ExportError(RuntimeError):
    """The model or the output directory cannot be exported / written; the message says what and where."""


def _check_model(model: MultiTaskRankingModel) -> None:
    if not isinstance(model, MultiTaskRankingModel):
        hint = " (pass model_and_loss.model)" if hasattr(model, "model") else ""
        raise ExportError(f"expected an unsharded MultiTaskRankingModel, got {type(model).__name__}{hint}")
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ExportError(
            f"{len(meta)} model tensors are on the meta device, not materialized (first: {meta[:3]}); load the "
            "checkpoint into a model built on CPU before exporting"
        )
    elsewhere = [f"{name} ({t.device})" for name, t in tensors if t.device.type != "cpu"]
    if elsewhere:
        raise ExportError(f"export needs the model on CPU; {elsewhere[:3]} are not; call model.cpu() first")
    if model.large_embeddings is None and model.large_embeddings_unpooled is None:
        return
    # torchrec only where there are tables: a model without them exports without torchrec installed.
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    if model.large_embeddings is not None and type(model.large_embeddings) is not EmbeddingBagCollection:
        raise ExportError(
            f"large_embeddings is a {type(model.large_embeddings).__name__}; export needs the unsharded torchrec "
            "EmbeddingBagCollection with every table fully on this process"
        )
    for key, collection in (model.large_embeddings_unpooled or {}).items():
        if type(collection) is not EmbeddingCollection:
            raise ExportError(
                f"large_embeddings_unpooled.{key} is a {type(collection).__name__}; export needs the unsharded "
                "torchrec EmbeddingCollection with every table fully on this process"
            )


def _plain_weight(name: str, weight: torch.Tensor) -> torch.Tensor:
    if type(weight.detach()) is not torch.Tensor:
        raise ExportError(
            f"table {name!r} weight is a {type(weight.detach()).__name__}, not a plain tensor; export an unsharded model"
        )
    return weight


def _served_tables(model: MultiTaskRankingModel):
    """(tables, {feature: (table, rows, dim, pooling)}, {feature: "hash" or "mod"}) of both collections."""
    from torchrec.modules.embedding_configs import pooling_type_to_str

    tables: dict[str, torch.Tensor] = {}
    reads: dict[str, tuple[str, int, int, str]] = {}
    transforms: dict[str, str] = {}
    ebc = model.large_embeddings
    if ebc is not None:
        if ebc.is_weighted():
            raise ExportError("large_embeddings is a weighted EmbeddingBagCollection, which serving does not support")
        for cfg in ebc.embedding_bag_configs():
            tables[cfg.name] = _plain_weight(cfg.name, ebc.embedding_bags[cfg.name].weight)
            reads.update({f: (cfg.name, cfg.num_embeddings, cfg.embedding_dim, pooling_type_to_str(cfg.pooling))
                          for f in cfg.feature_names})
        transforms.update(_transforms(model.id_transform, reads))
    for key, collection in (model.large_embeddings_unpooled or {}).items():
        own: dict[str, tuple[str, int, int, str]] = {}
        for cfg in collection.embedding_configs():
            tables[cfg.name] = _plain_weight(cfg.name, collection.embeddings[cfg.name].weight)
            # Pooled features pool by their table's config; history columns are looked up unpooled ("none").
            own.update({f: (cfg.name, cfg.num_embeddings, cfg.embedding_dim, model.unpooled_pooling.get(f, "none"))
                        for f in cfg.feature_names})
        transforms.update(_transforms(model.unpooled_transforms[key], own))
        reads.update(own)
    return tables, reads, transforms


def _transforms(transform, reads: dict[str, tuple[str, int, int, str]]) -> dict[str, str]:
    """{feature: its id transform}, after checking the transform maps into its table's rows."""
    out = {}
    for name, (table, rows, _, _) in reads.items():
        if transform.size_of.get(name) != rows:
            raise ExportError(f"sparse feature {name!r}: the id transform maps into {transform.size_of.get(name)} rows "
                              f"but table {table!r} has {rows}")
        out[name] = "hash" if transform.hashed[name] else "mod"
    return out


def _history_id_tables(model: MultiTaskRankingModel) -> dict[str, dict[str, Any]]:
    """{"<group>/id:<col>": its table, size, dim and id transform} of the history columns with a sharded table."""
    if not model.history_columns:
        return {}
    _, reads, transforms = _served_tables(model)
    out = {}
    for group, columns in model.history_columns.items():
        for column in columns:
            key = f"{group}/id:{column}"
            table, rows, dim, _ = reads[key]
            out[key] = {"table": table, "num_embeddings": rows, "embedding_dim": dim, "id_transform": transforms[key]}
    return out


def build_serving_model(model: MultiTaskRankingModel) -> ServingRanker:
    """The ServingRanker sharing the model's dense part and embedding tables (no copies), with the history id
    columns whose table is sharded looked up in the same tables."""
    _check_model(model)
    if model.large_embeddings is None and model.large_embeddings_unpooled is None:
        return ServingRanker(model.dense, {}, [])
    tables, reads, transforms = _served_tables(model)
    features = [ServedSparseFeature(name=name, table=reads[name][0], num_embeddings=reads[name][1],
                                    embedding_dim=reads[name][2], pooling=reads[name][3], id_transform=transforms[name])
                for name in model.sparse_feature_names]
    history = [ServedHistoryColumn(group=group, column=column, table=reads[f"{group}/id:{column}"][0],
                                   num_embeddings=reads[f"{group}/id:{column}"][1],
                                   id_transform=transforms[f"{group}/id:{column}"])
               for group, columns in model.history_columns.items() for column in columns]
    return ServingRanker(model.dense, tables, features, history)


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The resolved output directory, after checking it can be written (before any expensive work)."""
    target = Path(output_dir).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"output {target} exists and is not a directory")
        present = {p.name for p in target.iterdir()}
        if present and not overwrite:
            raise ExportError(f"output directory {target} is not empty; choose another or pass --overwrite")
        foreign = sorted(present - set(ARTIFACT_FILES))
        if foreign:
            # Never delete files that are not ours, even with overwrite.
            raise ExportError(f"output directory {target} holds files that are not a serving artifact: {foreign[:5]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ExportError(f"output directory {target} cannot be written: {exc.strerror or exc}") from None
    return target


def _example_inputs(config: RecapConfig, features: list[ServedSparseFeature], batch_size: int = 5) -> tuple:
    """Deterministic inputs for tracing: raw ids of any sign and range, a row without ids, distinct id counts."""
    schema = config.data.features
    g = torch.Generator().manual_seed(0)
    b = batch_size
    continuous = torch.randn(b, schema.num_continuous, generator=g).mul(2).exp()
    if continuous.numel():
        continuous.view(-1)[0] = float("nan")
    binary = (torch.rand(b, schema.num_binary, generator=g) < 0.5).float()
    discrete = torch.randint(0, 50, (b, schema.num_discrete), generator=g)
    embeddings = torch.randn(b, sum(e.dim for e in schema.embeddings), generator=g)
    values, lengths = [], []
    for i, _ in enumerate(features):
        # Row 0 has no ids; each feature gets a different total (>= 2, != b) so no size is specialized or tied.
        total = b + 2 + i
        row = torch.zeros(b, dtype=torch.int64)
        row[1:] = total // (b - 1)
        row[1] += total - int(row.sum())
        lengths.append(row)
        values.append(torch.randint(-(1 << 62), 1 << 62, (total,), generator=g))
    if not schema.sequences:
        return continuous, binary, discrete, embeddings, values, lengths
    from projects.home.recap.model.synthetic_batch import random_history

    # Requests of one and of several rows, the rows not in request order (5 rows: requests 0, 2, 1, 0, 2).
    request_of_row = torch.arange(b) * 2 % min(b, 3)
    requests = min(b, 3)
    histories: dict[str, torch.Tensor] = {}
    for name, group in schema.sequences.items():
        jagged = random_history(group, b, g, num_actions=config.model.sequences[name].num_actions or 1)
        padded = padded_history(jagged, group.max_length, name + "/")
        histories.update({k: v if "/candidate:" in k else v[:requests] for k, v in padded.items()})
    return continuous, binary, discrete, embeddings, values, lengths, histories, request_of_row


def _dynamic_shapes(num_features: int, history_inputs: list[str] | None = None) -> tuple:
    batch = torch.export.Dim("batch", min=1)
    ids = [{0: torch.export.Dim(f"num_ids_{i}", min=0)} for i in range(num_features)]
    shapes = ({0: batch}, {0: batch}, {0: batch}, {0: batch}, ids, [{0: batch} for _ in range(num_features)])
    if not history_inputs:
        return shapes
    # Histories come padded to max_length: only the number of requests varies; candidate ids are one per row.
    requests = torch.export.Dim("requests", min=1)
    histories = {key: {0: batch if "/candidate:" in key else requests} for key in history_inputs}
    return (*shapes, histories, {0: batch})


def _jagged_histories(histories: dict[str, torch.Tensor], request_of_row: torch.Tensor,
                      groups: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Serving histories (one per request) back in the batch's jagged form, one per row."""
    histories = {k: v if "/candidate:" in k else v[request_of_row] for k, v in histories.items()}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        prefix = group + "/"
        mask = histories[prefix + "mask"]
        fields = {"lengths": mask.sum(dim=1)}
        for key, tensor in histories.items():
            if key.startswith(prefix) and key != prefix + "mask":
                name = key[len(prefix):]
                fields[name] = tensor if name.startswith("candidate:") else tensor[mask]
        out[group] = fields
    return out


def _as_batch(inputs: tuple, feature_names: list[str], num_tasks: int, groups: list[str]) -> RecapBatch:
    continuous, binary, discrete, embeddings, values, lengths = inputs[:6]
    sequences = _jagged_histories(inputs[6], inputs[7], groups) if len(inputs) > 6 else {}
    b = continuous.shape[0]
    sparse = None
    if feature_names:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        sparse = KeyedJaggedTensor(keys=feature_names, values=torch.cat(values), lengths=torch.cat(lengths))
    return RecapBatch(
        continuous, binary, discrete, sparse, embeddings, torch.zeros(b, num_tasks), torch.ones(b, num_tasks),
        sequences=sequences,
    )


def _check_agreement(model: MultiTaskRankingModel, program: torch.nn.Module, inputs: tuple, features) -> None:
    with torch.no_grad():
        expected = model(_as_batch(inputs, [f.name for f in features], len(model.task_names),
                                   list(model.dense.history_lengths)))
        got = program(*inputs)
    for key in _outputs(model):
        diff = (got[key] - expected[key]).abs().max().item()
        # The score sums weighted probabilities: its rounding grows with the weights.
        tolerance = TOLERANCE * (max(1.0, model.dense.score_weight.abs().sum().item()) if key == SCORE else 1.0)
        if not diff <= tolerance:
            raise ExportError(f"the exported program's {key} differ from the model's by {diff:.3g} (> {tolerance:.3g})")


def _outputs(model: MultiTaskRankingModel) -> tuple[str, ...]:
    """The outputs the artifact documents and checks: the per-task ones, and the score when the model has one."""
    return OUTPUTS + ((SCORE,) if model.dense.has_score else ())


def _check_config(model: MultiTaskRankingModel, config: RecapConfig) -> None:
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
        "outputs": {key: ["batch", len(tasks)] if key != SCORE else ["batch"] for key in _outputs(model)},
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
        "history_id_tables": _history_id_tables(model),
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


def _readme(metadata: dict[str, Any]) -> str:
    """The artifact's README.md: this model's inputs and outputs and a torch-only scoring snippet."""
    rows = []
    for spec in metadata["inputs"]:
        if "columns" in spec:
            cols = ", ".join(c["name"] + (f"[{c['length']}]" if c["length"] else "") for c in spec["columns"])
            rows.append(f"| `{spec['name']}` | {spec['dtype']} [batch, {spec['shape'][1]}] | {cols or '(none)'} |")
        elif "groups" in spec:
            groups = "; ".join(f"{g}: {len(v['tensors'])} tensors padded to {v['max_length']} items"
                               for g, v in spec["groups"].items())
            rows.append(f"| `{spec['name']}` | dict of tensors, one history per request ([requests, ...]; the "
                        f"candidate ids [batch]), most recent item first | {groups} |")
        elif spec["name"] == "request_of_row":
            rows.append(f"| `{spec['name']}` | int64 [batch] | each row's request, in [0, requests) |")
        else:
            rows.append(f"| `{spec['name']}` | list of {spec['dtype']} tensors | {', '.join(spec['features']) or '(none)'} |")
    sparse = "\n".join(
        f"- `{f['name']}`: table `{f['table']}` ({f['num_embeddings']} x {f['embedding_dim']}), {f['pooling']} "
        f"pooling, {f['id_transform']} id transform"
        for f in metadata["sparse_features"]
    )
    ignored = metadata["ignored_at_serving"]
    return f"""# Recap ranker serving artifact

Scoring needs PyTorch {metadata['versions']['torch']} (or a later release that loads this torch.export format)
and nothing else. `metadata.json` describes every input; this file is generated from it.

## Score with torch only

```python
import json, torch

meta = json.load(open("metadata.json"))
model = torch.export.load("{metadata['model_file']}").module()
out = model(continuous, binary, discrete, embeddings, sparse_values, sparse_lengths{_history_args(metadata)})
out["calibrated_probabilities"]  # [batch, {len(metadata['tasks'])}], columns in meta["tasks"] order
```
{_requests_note(metadata)}
Or score a parquet file: `python {SCRIPT_FILE} . input.parquet --output predictions.parquet`
(needs torch, numpy, pyarrow).

## Inputs, in call order

| input | type | columns, in order ([n]: a fixed-length list column giving n values) |
|---|---|---|
{chr(10).join(rows)}

- Missing values: continuous NaN (non-finite values count as 0), binary/discrete/embeddings 0.
- `sparse_values[f]` holds the raw int64 ids of feature f for all rows, concatenated in row order;
  `sparse_lengths[f]` [batch] holds how many of them each row has (0 for none). The lengths must add up to the
  number of values. Ids may be any int64 (negative or out of range): the model maps them into its tables itself.
- Batch size and number of ids are dynamic (batch >= 1, ids >= 0){", and so is the number of requests (>= 1)" if _has_histories(metadata) else ""}.
{f"- Read but ignored at serving (position debias, always 'unknown'): {', '.join(ignored)}." if ignored else ""}

Sparse features:
{sparse or "(none)"}

## Outputs

A dict of float32 [batch, tasks] tensors: `logits`, `probabilities` (sigmoid of the logits) and
`calibrated_probabilities` (corrected for the training data's per-task downsampling, see `calibration`).
Tasks, in column order: {', '.join(metadata['tasks'])}.
{_score_line(metadata)}"""


def _has_histories(metadata: dict[str, Any]) -> bool:
    return any(spec["name"] == "histories" for spec in metadata["inputs"])


def _history_args(metadata: dict[str, Any]) -> str:
    return ", histories, request_of_row" if _has_histories(metadata) else ""


def _requests_note(metadata: dict[str, Any]) -> str:
    """The artifact README's word on requests, for a model with histories."""
    if not _has_histories(metadata):
        return ""
    return """
One request (one user history, C candidates): the history tensors hold 1 row, the other inputs and the candidate
ids C rows, and `request_of_row = torch.zeros(C, dtype=torch.int64)`; the history is encoded once for the C
candidates, and each candidate's scores are the ones it gets alone. Several requests: R history rows and each row's
request in `request_of_row`; row by row: R = batch and `request_of_row = torch.arange(batch)`.
`score_example.py` builds these inputs from parquet rows (`request_inputs` for one request).
"""


def _score_line(metadata: dict[str, Any]) -> str:
    scoring = metadata.get("scoring")
    if not scoring:
        return ""
    terms = " + ".join(f"{w:g} * {t}" for t, w in scoring["weights"].items())
    return f"`score` [batch]: the ranking score, {terms} (calibrated probabilities).\n"


def export_serving_artifact(
    model: MultiTaskRankingModel,
    config: RecapConfig,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Export an unsharded CPU model (tables materialized) to output_dir; returns the artifact directory."""
    serving = build_serving_model(model)
    _check_config(model, config)
    target = check_output_dir(output_dir, overwrite)
    features = serving.features
    metadata = serving_metadata(model, config, features, source)
    inputs = _example_inputs(config, features)
    was_training = model.training
    model.eval()
    serving.eval()
    try:
        history_inputs = list(inputs[6]) if len(inputs) > 6 else None
        program = torch.export.export(serving, inputs, dynamic_shapes=_dynamic_shapes(len(features), history_inputs))
        _check_agreement(model, program.module(), inputs, features)
    finally:
        model.train(was_training)

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        metadata_text = json.dumps(metadata, indent=2) + "\n"
        torch.export.save(program, staging / MODEL_FILE, extra_files={METADATA_FILE: metadata_text})
        (staging / METADATA_FILE).write_text(metadata_text)
        (staging / README_FILE).write_text(_readme(metadata))
        shutil.copyfile(Path(__file__).with_name(SCRIPT_FILE), staging / SCRIPT_FILE)
        shutil.copyfile(Path(list_checks.__file__), staging / CHECKS_FILE)
        os.chmod(staging, 0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"writing the artifact to {target} failed: {exc}") from None
    return target
