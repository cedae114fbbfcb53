"""MultiTaskRankingModel: the sparse lookup, then the dense model (model/dense.py) on plain tensors.

The model is split at the sparse lookup: `MultiTaskRankingModel` holds the id transforms and the torchrec
collections (`large_embeddings`, an EmbeddingBagCollection, and `large_embeddings_unpooled`, one EmbeddingCollection
per embedding dim for the tables that history id columns read; all shardable) and calls `DenseRankingModel`, which
takes plain tensors and can be exported with torch.export (or scripted) for serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from common.batch import RecapBatch
from common.history import pad_jagged, padded_history
from common.history_inputs import tracing
from common.sparse_embeddings import SparseIdTransform, pool_jagged
from core.compile import is_compiled
from projects.home.recap.model.dense import DenseRankingModel

if TYPE_CHECKING:  # only the sparse lookup needs torchrec: DenseRankingModel runs without it
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor


class MultiTaskRankingModel(nn.Module):
    """The whole ranker on a RecapBatch: id transform + large embedding lookup, then the DenseRankingModel."""

    def __init__(
        self,
        dense: DenseRankingModel,
        large_embeddings: EmbeddingBagCollection | None = None,
        id_transform: SparseIdTransform | None = None,
        unpooled: UnpooledTables | None = None,
        sparse_feature_names: list[str] | None = None,
    ) -> None:
        """unpooled: the tables history id columns read (see UnpooledTables); sparse_feature_names: the order of
        the pooled features in the dense input (default: the bag collection's)."""
        super().__init__()
        if (large_embeddings is None) != (id_transform is None):
            raise ValueError("large_embeddings and id_transform go together")
        self.dense = dense
        self.large_embeddings = large_embeddings
        self.id_transform = id_transform
        self.large_embeddings_unpooled = unpooled.collections if unpooled is not None else None
        self.unpooled_transforms = unpooled.transforms if unpooled is not None else None
        # Kept as plain data: torchrec's train pipeline wraps the id transforms (PipelinedPostproc).
        self.unpooled_pooling = dict(unpooled.pooling) if unpooled is not None else {}
        self.history_columns = dict(unpooled.history_columns) if unpooled is not None else {}
        # Look each distinct history id up once per batch (see _dedups): the same rows and gradients, fewer lookups.
        self.dedup_history_ids = True
        # In CPU training, give the packing encoders the history rows packed (see padded_histories).
        self.pack_history_rows = True
        self.bag_feature_names = list(id_transform.feature_names) if id_transform is not None else []
        pooled = self.bag_feature_names + list(self.unpooled_pooling)
        self.sparse_feature_names = list(sparse_feature_names) if sparse_feature_names is not None else pooled
        if self.table_modules() and sorted(self.sparse_feature_names) != sorted(pooled):
            raise ValueError(f"sparse_feature_names {self.sparse_feature_names} are not the pooled features {pooled}")

    @property
    def task_modules(self) -> nn.ModuleDict:
        """Each task's tower, final logit and affine map, keyed by task name."""
        return self.dense.task_modules

    @property
    def task_names(self) -> list[str]:
        return self.dense.task_names

    @property
    def output_names(self) -> list[str]:
        """The outputs beyond logits and probabilities (DenseRankingModel.output_names)."""
        return self.dense.output_names

    def pop_non_finite_count(self) -> int:
        """Non-finite continuous values replaced by 0 in training since the last call (a device sync)."""
        return self.dense.featurizer.pop_non_finite_count()

    def train_pipeline_problem(self) -> str | None:
        """Why torchrec's TrainPipelineSparseDist cannot train this model (None when it can): its symbolic trace
        cannot follow the history groups' dicts of tensors (core/train_loop.py then trains without it)."""
        if self.dense.histories is not None:
            return "the model encodes engagement histories, whose inputs torch.fx cannot trace"
        return None

    def large_table_weights(self) -> dict[str, nn.Parameter]:
        """{table name: weight} of every large table (bag and unpooled collections), unsharded."""
        out = {} if self.large_embeddings is None else {
            name: bag.weight for name, bag in self.large_embeddings.embedding_bags.items()}
        for collection in (self.large_embeddings_unpooled or {}).values():
            out.update({name: table.weight for name, table in collection.embeddings.items()})
        return out

    def table_modules(self) -> list[nn.Module]:
        """The torchrec collections (on "meta" until materialized)."""
        unpooled = list(self.large_embeddings_unpooled.values()) if self.large_embeddings_unpooled else []
        return ([self.large_embeddings] if self.large_embeddings is not None else []) + unpooled

    def embed_sparse(self, sparse: KeyedJaggedTensor | None, batch_size: int,
                     unpooled: dict[str, JaggedTensor] | None = None, bags: object | None = None) -> torch.Tensor:
        """Pooled large embeddings [B, P] of the batch's sparse ids (ids mapped into range first); `unpooled`: the
        rows of the features whose table lives in an EmbeddingCollection (`lookup_unpooled`), pooled here; `bags`:
        the bag collection's output when the caller has started its lookup already (`lookup_bags`)."""
        if not self.sparse_feature_names:
            return torch.zeros(batch_size, 0, device=self.dense.log_ratio.device)
        if sparse is None:
            raise ValueError(
                f"the model has large embeddings for {self.sparse_feature_names} but batch.sparse is None"
            )
        from torchrec.sparse.jagged_tensor import KeyedTensor

        if self.large_embeddings is not None:
            pooled = bags if bags is not None else self.lookup_bags(sparse)
            if not self.unpooled_pooling:
                # A sharded collection orders its output by sharding plan, not by table config: regroup by feature
                # name so the dense part sees the same columns whatever the world size.
                return KeyedTensor.regroup([pooled], [list(self.sparse_feature_names)])[0]
            by_feature = pooled.to_dict()
        else:
            by_feature = {}
        if unpooled is None:
            unpooled = self.lookup_unpooled(sparse, {}, batch_size)
        for name, mode in self.unpooled_pooling.items():
            rows = unpooled[name]
            by_feature[name] = pool_jagged(rows.values(), rows.lengths(), mode)
        return torch.cat([by_feature[name] for name in self.sparse_feature_names], dim=1)

    def lookup_bags(self, sparse: KeyedJaggedTensor) -> KeyedTensor:
        """The bag collection's pooled rows of the (range-mapped) ids; sharded, its exchange between ranks runs
        until the result is read."""
        return self.large_embeddings(self.id_transform(sparse))

    def lookup_unpooled(self, sparse: KeyedJaggedTensor | None, sequences: dict[str, dict[str, torch.Tensor]],
                        batch_size: int) -> dict[str, JaggedTensor]:
        """{feature: its rows} from the EmbeddingCollections: the pooled features of tables shared with a history
        (from `sparse`), each history id column's items ("<group>/id:<col>", the group's lengths) and its
        candidate's id ("<group>/candidate:<col>", one per row); one KeyedJaggedTensor per collection."""
        if self.large_embeddings_unpooled is None:
            return {}
        from torchrec.distributed.types import LazyAwaitable
        from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

        history = _history_features(self.history_columns, sequences, batch_size)
        out: dict[str, JaggedTensor] = {}
        for key, collection in self.large_embeddings_unpooled.items():
            transform = self.unpooled_transforms[key]
            names = list(transform.feature_names)
            parts = []
            pooled = [n for n in names if n in self.unpooled_pooling]
            if pooled:
                absent = [n for n in pooled if sparse is None or n not in sparse.keys()]
                if absent:
                    raise ValueError(f"the model has large embeddings for the sparse features {absent}, which the "
                                     f"batch lacks (it has {None if sparse is None else sparse.keys()})")
                parts.append(sparse.permute([sparse.keys().index(n) for n in pooled]))
            own = [n for n in names if n not in self.unpooled_pooling]
            expand: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            if own:
                missing = [n for n in own if n not in history]
                if missing:
                    raise ValueError(f"the model looks up the history columns {missing}, which the batch lacks")
                ids, lengths = [], []
                for name in own:
                    values, row_lengths = history[name]
                    if self.dedup_history_ids and _dedups(values):
                        values, inverse = torch.unique(values, return_inverse=True)
                        expand[name] = (inverse, row_lengths)
                        # The distinct ids as the first row's items: the collection returns their rows in order.
                        row_lengths = torch.zeros_like(row_lengths)
                        row_lengths[0] = values.numel()
                    ids.append(values)
                    lengths.append(row_lengths)
                parts.append(KeyedJaggedTensor(keys=own, values=torch.cat(ids).to(torch.int64),
                                               lengths=torch.cat(lengths).to(torch.int32), stride=batch_size))
            features = parts[0] if len(parts) == 1 else KeyedJaggedTensor.concat(parts)
            looked_up = collection(transform(features))
            if expand and isinstance(looked_up, LazyAwaitable):  # a sharded collection's output
                looked_up = looked_up.wait()
            for name, (inverse, row_lengths) in expand.items():
                looked_up[name] = JaggedTensor(values=looked_up[name].values().index_select(0, inverse),
                                               lengths=row_lengths)
            out.update(looked_up)
        return out

    def padded_histories(self, batch: RecapBatch, unpooled: dict[str, JaggedTensor] | None = None
                         ) -> dict[str, torch.Tensor] | None:
        """The batch's jagged history groups padded to their max_length on the batch's device (common/history.py),
        with the rows of the columns whose table is sharded ("<group>/emb:<col>" [B, L, D] zeros past each row's
        length, "<group>/candidate:emb:<col>" [B, D]; in CPU training, for an encoder that packs its items,
        "<group>/items:emb:<col>" [N, D] instead: the rows as looked up); `unpooled` is `lookup_unpooled`'s output
        (looked up here when None)."""
        lengths = self.dense.history_lengths
        if not lengths:
            return None
        missing = [g for g in lengths if g not in batch.sequences]
        if missing:
            raise ValueError(f"the model encodes the histories {missing}, which the batch does not carry")
        if unpooled is None and self.history_columns:
            unpooled = self.lookup_unpooled(batch.sparse, batch.sequences, batch.batch_size)
        out: dict[str, torch.Tensor] = {}
        for group, max_length in lengths.items():
            prefix = group + "/"
            out.update(padded_history(batch.sequences[group], max_length, prefix))
            # Training on the CPU, the encoder reads the real items packed (HistoryEncoder.packs): the rows go to it
            # as they are, in the jagged order that packing gives, rather than padded here and packed again there.
            # A compiled dense model takes them padded (it does not pack).
            packed = (self.pack_history_rows and self.training and not is_compiled(self.dense)
                      and self.dense.histories[group].packs(out[prefix + "mask"]))
            for column in self.history_columns.get(group, []):
                rows = unpooled[prefix + "id:" + column]
                if packed:
                    out[prefix + "items:emb:" + column] = rows.values()
                else:
                    out[prefix + "emb:" + column] = pad_jagged(rows.values(), rows.lengths(), max_length)
                candidate = unpooled.get(prefix + "candidate:" + column)
                if candidate is not None:
                    out[prefix + "candidate:emb:" + column] = candidate.values()
        return out

    def forward(self, batch: RecapBatch) -> dict[str, torch.Tensor]:
        # The bag lookup first: on several ranks its rows travel back while the sequence collection looks up.
        bags = None
        both = self.large_embeddings is not None and self.large_embeddings_unpooled is not None
        if both and batch.sparse is not None:
            bags = self.lookup_bags(batch.sparse)
        unpooled = self.lookup_unpooled(batch.sparse, batch.sequences, batch.batch_size)
        pooled = self.embed_sparse(batch.sparse, batch.batch_size, unpooled, bags)
        return self.dense(batch.continuous, batch.binary, batch.discrete, batch.embeddings, pooled,
                          self.padded_histories(batch, unpooled))


class UnpooledTables:
    """What MultiTaskRankingModel needs for the tables that history id columns read: the EmbeddingCollections and
    their id transforms (ModuleDicts keyed "dim_<embedding_dim>"), the pooling of the pooled features that read
    them ({feature: "sum" or "mean"}) and the history id columns they serve ({group: [column]})."""

    def __init__(self, collections: nn.ModuleDict, transforms: nn.ModuleDict, pooling: dict[str, str],
                 history_columns: dict[str, list[str]]) -> None:
        if list(collections) != list(transforms):
            raise ValueError(f"collections {list(collections)} and id transforms {list(transforms)} differ")
        self.collections = collections
        self.transforms = transforms
        self.pooling = pooling
        self.history_columns = history_columns


def _dedups(ids: torch.Tensor) -> bool:
    """Whether the history's ids are looked up once per distinct id: on the CPU, outside tracing. A batch's history
    ids repeat (a request's candidates share their history, popular authors recur: 70-95% of the demo's history ids
    per batch are repeats), and each distinct id is then one row to look up, send between ranks and update; its
    gradient is the sum over the occurrences either way (index_select's backward adds them up, as the table's
    backward does for repeated ids). On a GPU, torch.unique would synchronize with the device every step (torchrec's
    `use_index_dedup` is the GPU's counterpart); under tracing its size is data-dependent."""
    return ids.device.type == "cpu" and ids.numel() > 0 and not tracing()


def _history_features(columns: dict[str, list[str]], sequences: dict[str, dict[str, torch.Tensor]],
                      batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"<group>/id:<col>" or "<group>/candidate:<col>": (ids, lengths [B])} of the batch's history columns."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group, names in columns.items():
        fields = sequences.get(group)
        if fields is None:
            continue
        for column in names:
            out[f"{group}/id:{column}"] = (fields["id:" + column], fields["lengths"])
            candidate = fields.get("candidate:" + column)
            if candidate is not None:
                out[f"{group}/candidate:{column}"] = (candidate, torch.ones_like(fields["lengths"]))
    return out
