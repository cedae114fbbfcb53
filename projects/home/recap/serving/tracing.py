"""What the ServingRanker is traced with and checked against: deterministic example inputs on the request path
(histories one per request, with request_of_row), their dynamic dimensions, and the check that the exported program
reproduces the eager model on them (the histories put back in the batch's jagged form, one per row)."""

from __future__ import annotations

import torch

from common.batch import RecapBatch
from common.history import padded_history
from projects.home.recap.model.multi_task import MultiTaskRankingModel
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.artifact import SCORE, ExportError, served_outputs
from projects.home.recap.serving.serving_model import ServedSparseFeature

# The exported program must reproduce the model to this absolute tolerance on the export-time check batch.
TOLERANCE = 1e-5


def example_inputs(config: RecapConfig, features: list[ServedSparseFeature], batch_size: int = 5) -> tuple:
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


def dynamic_shapes(num_features: int, history_inputs: list[str] | None = None) -> tuple:
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


def check_agreement(model: MultiTaskRankingModel, program: torch.nn.Module, inputs: tuple, features) -> None:
    with torch.no_grad():
        expected = model(_as_batch(inputs, [f.name for f in features], len(model.task_names),
                                   list(model.dense.history_lengths)))
        got = program(*inputs)
    for key in served_outputs(model):
        diff = (got[key] - expected[key]).abs().max().item()
        # The score sums weighted probabilities: its rounding grows with the weights.
        tolerance = TOLERANCE * (max(1.0, model.dense.score_weight.abs().sum().item()) if key == SCORE else 1.0)
        if not diff <= tolerance:
            raise ExportError(f"the exported program's {key} differ from the model's by {diff:.3g} (> {tolerance:.3g})")
