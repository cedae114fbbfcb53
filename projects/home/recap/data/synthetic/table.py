"""One file's table: labels drawn from the true probabilities, which are written next to them as oracle columns, in
an Arrow schema without nullable fields."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from projects.home.recap.data.layout import ORACLE_PREFIX
from projects.home.recap.data.synthetic.ground_truth import World
from projects.home.recap.data.synthetic.history import HISTORY_COLUMNS
from projects.home.recap.data.synthetic.rows import _draw
from projects.home.recap.data.synthetic.sampling import _sigmoid_inplace
from projects.home.recap.data.synthetic.spec import BINARY, CONTINUOUS, LABEL_PREFIX


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _id_list(values: np.ndarray, counts: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def generate_table(world: World, rng: np.random.Generator, n: int, first_row_id: int) -> pa.Table:
    """n rows with labels drawn from the ground truth and the true probabilities as oracle columns."""
    spec = world.spec
    d = _draw(world, rng, n)
    prob = d["logits"]
    prob += world.task_bias.astype(np.float32)[:, None]
    _sigmoid_inplace(prob)
    labels = (rng.random(prob.shape, dtype=np.float32) < prob).view(np.int8)
    ones = np.ones(n, dtype=np.int32)
    columns: dict[str, pa.Array] = {
        # Impressions are numbered from the file's first row number, requests from the number of their first row:
        # both unique across files and splits.
        "impression_id": pa.array(first_row_id + np.arange(n, dtype=np.int64)),
        "request_id": pa.array(first_row_id + np.arange(n, dtype=np.int64) // spec.candidates_per_request
                               * spec.candidates_per_request),
        CONTINUOUS: _fixed_list(d["continuous"]),
        BINARY: _fixed_list(d["binary"]),
        "client_id": pa.array(d["client_id"]),
        "author_type": pa.array(d["author_type"]),
        "hour_of_day": pa.array(d["hour_of_day"]),
        "position": pa.array(d["position"]),
        "user_id": _id_list(d["user_id"], ones),
        "author_id": _id_list(d["author_id"], ones),
        "hashtags": _id_list(d["hashtags"], d["hashtag_counts"]),
    }
    if "history" in d:
        lists = d["history"]
        for name in HISTORY_COLUMNS:
            columns[name] = _id_list(lists[name], lists["lengths"])
    for (name, _), values in zip(spec.embeddings, d["embeddings"]):
        columns[name] = _fixed_list(values.astype(np.float32, copy=False))
    for j, task in enumerate(world.task_names):
        columns[LABEL_PREFIX + task] = pa.array(labels[j])
    for j, task in enumerate(world.task_names):
        columns[ORACLE_PREFIX + LABEL_PREFIX + task] = pa.array(prob[j])
    table = pa.table(columns)
    # Nothing here is ever null: required fields spare readers the definition levels (~25% faster decoding of the
    # float lists).
    return table.cast(pa.schema([_required(f) for f in table.schema]))


def _required(field: pa.Field) -> pa.Field:
    kind = field.type
    if pa.types.is_fixed_size_list(kind):
        kind = pa.list_(pa.field("item", kind.value_type, nullable=False), kind.list_size)
    elif pa.types.is_list(kind):
        kind = pa.list_(pa.field("item", kind.value_type, nullable=False))
    return pa.field(field.name, kind, nullable=False)
