"""ServingRanker: the trained ranker on plain tensors, with the large embedding tables as ordinary weights.

Signature (the exported program's inputs, in this order):
  continuous [B, C] float32, binary [B, Nb] float32, discrete [B, D] int64, embeddings [B, E] float32,
  sparse_values: list of F int64 tensors [N_f], the raw ids of feature f, rows concatenated in row order,
  sparse_lengths: list of F int64 tensors [B], the number of ids of each row (0 for a row without ids).
The F sparse features are the ones the embedding tables read, in table order (`feature_names`). Raw ids go through
the same id transform as in training (common.sparse_embeddings), then F.embedding_bag pools them with the trained
weights, and the DenseRankingModel maps everything to logits, probabilities and calibrated probabilities [B, T].
A model with engagement histories takes two more inputs: `histories`, the histories of R requests and the
candidate ids of the B rows, {"<group>/mask": [R, L] bool, "<group>/id:<col>", "<group>/actions": [R, L] int64,
"<group>/continuous": [R, L, C] float32, "<group>/candidate:<col>": [B] int64}, each group padded to its max_length,
most recent item first (common/history.py); and `request_of_row` [B] int64, the request in [0, R) of each row. Each
history is encoded once and every row scored against its request's (the same scores as row by row, R = B and
request_of_row = arange(B)). A history id column whose table is a sharded one (`history_columns`: a large table
shared with a candidate feature, or its own) is looked up here in that table, with that table's id transform: its
rows join the histories as "<group>/emb:<col>" [R, L, D] (zeros past each history's length) and
"<group>/candidate:emb:<col>" [B, D], as the training model's lookup gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.batch import RecapBatch
from common.history import padded_history
from common.sparse_embeddings import hash_ids


@dataclass(frozen=True)
class ServedSparseFeature:
    """One sparse feature as served: the table it reads, the table's size, its pooling and its id transform."""

    name: str
    table: str
    num_embeddings: int
    embedding_dim: int
    pooling: str  # "sum" or "mean"
    id_transform: str  # "hash" or "mod"


@dataclass(frozen=True)
class ServedHistoryColumn:
    """A history id column looked up in one of the served tables: its group, column, table and id transform."""

    group: str
    column: str
    table: str
    num_embeddings: int
    id_transform: str  # "hash" or "mod"


def _table_rows(ids: torch.Tensor, weight: torch.Tensor, num_embeddings: int, id_transform: str) -> torch.Tensor:
    """The rows of raw int64 ids, through the id transform (common.sparse_embeddings)."""
    ids = ids.to(torch.int64)
    if id_transform == "hash":
        ids = hash_ids(ids)
    return F.embedding(torch.remainder(ids, num_embeddings), weight)


class ServingRanker(nn.Module):
    """Id transform + embedding-bag pooling over plain weight tensors, then the dense ranking model."""

    def __init__(
        self, dense: nn.Module, tables: dict[str, torch.Tensor], features: list[ServedSparseFeature],
        history_columns: list[ServedHistoryColumn] | None = None,
    ) -> None:
        super().__init__()
        for c in history_columns or []:
            if c.table not in tables or c.id_transform not in ("hash", "mod"):
                raise ValueError(f"history column {c.group}/{c.column}: table {c.table!r} is not given or id_transform "
                                 f"{c.id_transform!r} is not hash or mod")
            if tables[c.table].shape[0] != c.num_embeddings:
                raise ValueError(f"table {c.table!r} has {tables[c.table].shape[0]} rows, history column "
                                 f"{c.group}/{c.column} expects {c.num_embeddings}")
        for f in features:
            if f.table not in tables:
                raise ValueError(f"sparse feature {f.name!r} reads table {f.table!r}, which is not given")
            if f.pooling not in ("sum", "mean") or f.id_transform not in ("hash", "mod"):
                raise ValueError(f"sparse feature {f.name!r}: pooling {f.pooling!r} / id_transform {f.id_transform!r}")
            shape = tuple(tables[f.table].shape)
            if shape != (f.num_embeddings, f.embedding_dim):
                raise ValueError(
                    f"table {f.table!r} has shape {shape}, feature {f.name!r} expects "
                    f"({f.num_embeddings}, {f.embedding_dim})"
                )
        self.dense = dense
        # Shares storage with the given tensors: no copy of the (large) tables.
        self.tables = nn.ParameterDict(
            {name: nn.Parameter(w.detach(), requires_grad=False) for name, w in tables.items()}
        )
        self.features = list(features)
        self.history_columns = list(history_columns or [])

    @property
    def feature_names(self) -> list[str]:
        """The sparse features, in the order of the sparse_values / sparse_lengths lists."""
        return [f.name for f in self.features]

    def forward(
        self,
        continuous: torch.Tensor,
        binary: torch.Tensor,
        discrete: torch.Tensor,
        embeddings: torch.Tensor,
        sparse_values: list[torch.Tensor],
        sparse_lengths: list[torch.Tensor],
        histories: dict[str, torch.Tensor] | None = None,
        request_of_row: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        pooled = []
        for f, values, lengths in zip(self.features, sparse_values, sparse_lengths, strict=True):
            lengths = lengths.to(torch.int64)
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
            # Checked in the exported program too: a bad pair would otherwise pool the wrong ids silently.
            torch._assert_async(
                (lengths >= 0).all(), f"sparse feature {f.name}: sparse_lengths has negative entries"
            )
            torch._assert_async(
                offsets[-1] == values.shape[0],
                f"sparse feature {f.name}: sparse_lengths do not add up to the number of sparse_values",
            )
            ids = values.to(torch.int64)
            if f.id_transform == "hash":
                ids = hash_ids(ids)
            ids = torch.remainder(ids, f.num_embeddings)
            pooled.append(
                F.embedding_bag(ids, self.tables[f.table], offsets, mode=f.pooling, include_last_offset=True)
            )
        if pooled:
            pooled_sparse = torch.cat(pooled, dim=1)
        else:
            pooled_sparse = continuous.new_zeros(continuous.shape[0], 0)
        if histories is None:
            return self.dense(continuous, binary, discrete, embeddings, pooled_sparse)
        return self.dense(continuous, binary, discrete, embeddings, pooled_sparse, self._with_rows(histories),
                          request_of_row)

    def _with_rows(self, histories: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The histories with the rows of the columns whose table is served here."""
        if not self.history_columns:
            return histories
        out = dict(histories)
        for c in self.history_columns:
            prefix = c.group + "/"
            weight = self.tables[c.table]
            mask = histories[prefix + "mask"]
            rows = _table_rows(histories[prefix + "id:" + c.column], weight, c.num_embeddings, c.id_transform)
            out[prefix + "emb:" + c.column] = rows * mask.unsqueeze(-1).to(rows.dtype)
            candidate = histories.get(prefix + "candidate:" + c.column)
            if candidate is not None:
                out[prefix + "candidate:emb:" + c.column] = _table_rows(candidate, weight, c.num_embeddings,
                                                                        c.id_transform)
        return out


def serving_inputs(
    batch: RecapBatch, feature_names: list[str], history_lengths: dict[str, int] | None = None,
    share_requests: bool = True,
) -> tuple:
    """The ServingRanker's positional inputs for a RecapBatch (sparse features picked by name from its KJT); with
    history groups ({group: max_length}) also the padded histories and request_of_row (7th and 8th inputs): one
    history per run of consecutive rows whose histories are identical (the rows of one request, as the files hold
    them) with `share_requests`, else one per row (request_of_row = arange(B))."""
    values: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    if feature_names:
        if batch.sparse is None:
            raise ValueError(f"the model reads sparse features {feature_names} but batch.sparse is None")
        jagged = batch.sparse.to_dict()
        missing = [n for n in feature_names if n not in jagged]
        if missing:
            raise KeyError(f"sparse features {missing} are not in the batch (it has {batch.sparse.keys()})")
        for name in feature_names:
            values.append(jagged[name].values().to(torch.int64))
            lengths.append(jagged[name].lengths().to(torch.int64))
    inputs = (batch.continuous, batch.binary, batch.discrete, batch.embeddings, values, lengths)
    if not history_lengths:
        return inputs
    histories: dict[str, torch.Tensor] = {}
    for group, max_length in history_lengths.items():
        histories.update(padded_history(batch.sequences[group], max_length, group + "/"))
    return (*inputs, *per_request(histories, share_requests))


def per_request(histories: dict[str, torch.Tensor], share_requests: bool = True
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(histories, request_of_row) of padded per-row histories (every group's tensors one row per candidate row):
    with `share_requests`, one history per run of consecutive rows whose history tensors, all groups together, are
    identical; else one per row."""
    candidate = [k for k in histories if "/candidate:" in k]
    lists = {k: v for k, v in histories.items() if k not in candidate}
    rows = next(iter(lists.values())).shape[0]
    if not share_requests or rows < 2:
        return histories, torch.arange(rows)
    same = torch.ones(rows - 1, dtype=torch.bool)
    for tensor in lists.values():
        flat = tensor.reshape(rows, -1)
        same &= (flat[1:] == flat[:-1]).all(dim=1)
    starts = torch.cat([torch.ones(1, dtype=torch.bool), ~same])
    first = torch.nonzero(starts).reshape(-1)
    request_of_row = torch.cumsum(starts.to(torch.int64), 0) - 1
    out = {k: v.index_select(0, first) for k, v in lists.items()}
    out.update({k: histories[k] for k in candidate})
    return out, request_of_row
