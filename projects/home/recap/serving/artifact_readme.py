"""The artifact's README.md, generated from its metadata.json: this model's inputs in call order, its outputs and a
torch-only scoring snippet (with the request inputs when the model encodes histories)."""

from __future__ import annotations

from typing import Any

from projects.home.recap.serving.artifact import SCRIPT_FILE


def artifact_readme(metadata: dict[str, Any]) -> str:
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
  String ids (trained from string columns) are hashed as training hashed them: `list_checks.id_values(pyarrow.array(
  [...]))`, from `list_checks.py` here (score_example.py does this for parquet input).
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
