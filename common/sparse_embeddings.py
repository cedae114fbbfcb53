"""Large embedding tables over sparse id features: the torchrec collections and the id transform.

A table read by pooled features only lives in an EmbeddingBagCollection. A table that an engagement history's id
column reads too (its own table, or a candidate feature's table shared with the history) lives in an
EmbeddingCollection, which returns one row per id (unpooled, "sequence" embeddings): torchrec cannot share one
parameter between the two kinds of collection, so such a table's pooled features are looked up unpooled there too
and pooled here (`pool_jagged`, the mean or sum of each bag's rows, what the bag collection computes), as
TorchEasyRec looks a sequence group's candidate-side features up in the group's EmbeddingCollection. A feature
processor was the other way: torchrec's only one feeds per-id weights into a pooled lookup and cannot return the
rows one by one, and two collections each holding the table would be two tables. The cost: a shared table's pooled
features send each id's row back from its shard instead of one pooled row per bag, and an EmbeddingCollection holds
tables of one dim (one collection per dim).

The transform (raw int64 ids -> [0, num_embeddings)) runs on the KeyedJaggedTensor's values before the lookup and
stays outside the EmbeddingBagCollection, so a sharded collection (DistributedModelParallel) works unchanged.
  mod:  id mod n                         (non-negative for negative ids)
  hash: h = id * 0x9E3779B97F4A7C15 (int64, wrapping); h = h ^ (h >> 32) (arithmetic shift); h mod n
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.init import EmbeddingInit, embedding_initializer

if TYPE_CHECKING:  # torchrec is imported where a table is built or looked up: the dense model runs without it
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

# The 64-bit golden-ratio constant as a signed int64 (multiplication wraps around in two's complement).
HASH_MULTIPLIER = 0x9E3779B97F4A7C15 - (1 << 64)


@dataclass(frozen=True)
class LargeTableSpec:
    """One embedding-bag table: its name, the sparse features it pools, its size and how ids are brought in range."""

    name: str
    feature_names: tuple[str, ...]
    num_embeddings: int
    embedding_dim: int
    pooling: str = "mean"
    id_transform: str = "hash"
    # Initial weights: None keeps torchrec's uniform(+-sqrt(1/num_embeddings)); ("uniform", bound) or ("normal", std).
    init: EmbeddingInit | None = None
    # Features looked up unpooled (history id columns, "<group>/id:<col>" and "<group>/candidate:<col>"): a table
    # with any lives in an EmbeddingCollection, its pooled features are pooled by `pool_jagged`.
    sequence_features: tuple[str, ...] = ()

    @property
    def unpooled(self) -> bool:
        """True when the table lives in an EmbeddingCollection (some feature reads it unpooled)."""
        return bool(self.sequence_features)


def _init_fn(table: LargeTableSpec):
    """The in-place initializer torchrec applies to the table's weights (also to each shard of a sharded table)."""
    return embedding_initializer(table.init, table.name)


def hash_ids(ids: torch.Tensor) -> torch.Tensor:
    """A deterministic int64 mixing of ids (multiply by the golden-ratio constant, xor-shift), before the modulo."""
    h = ids.to(torch.int64) * HASH_MULTIPLIER
    return torch.bitwise_xor(h, torch.bitwise_right_shift(h, 32))


def build_embedding_bag_collection(
    tables: list[LargeTableSpec], device: torch.device | str = "cpu"
) -> EmbeddingBagCollection:
    """The torchrec EmbeddingBagCollection of `tables` (device "meta" to let DistributedModelParallel shard it)."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    poolings = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
    configs = []
    for t in tables:
        if t.pooling not in poolings:
            raise ValueError(
                f"large embedding table {t.name!r}: pooling {t.pooling!r} is not one of sum, mean"
            )
        configs.append(
            EmbeddingBagConfig(
                name=t.name,
                feature_names=list(t.feature_names),
                num_embeddings=t.num_embeddings,
                embedding_dim=t.embedding_dim,
                pooling=poolings[t.pooling],
                init_fn=_init_fn(t),
            )
        )
    return EmbeddingBagCollection(tables=configs, device=torch.device(device))


def build_embedding_collections(
    tables: list[LargeTableSpec], device: torch.device | str = "cpu"
) -> dict[int, EmbeddingCollection]:
    """{embedding_dim: the torchrec EmbeddingCollection of the tables of that dim} (an EmbeddingCollection holds
    tables of one dim); each table reads its pooled and its sequence features."""
    from torchrec.modules.embedding_configs import EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingCollection

    by_dim: dict[int, list] = {}
    for t in tables:
        by_dim.setdefault(t.embedding_dim, []).append(
            EmbeddingConfig(
                name=t.name,
                feature_names=[*t.feature_names, *t.sequence_features],
                num_embeddings=t.num_embeddings,
                embedding_dim=t.embedding_dim,
                init_fn=_init_fn(t),
            )
        )
    return {dim: EmbeddingCollection(tables=configs, device=torch.device(device)) for dim, configs in by_dim.items()}


def pool_jagged(values: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, D] sum or mean of each bag's rows (`values` [N, D], the bags' rows one after another, `lengths` [B]); an
    empty bag gives zeros, as torchrec's pooled lookup does."""
    lengths = lengths.to(torch.int64)
    bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths,
                                  output_size=values.shape[0])
    out = values.new_zeros((lengths.numel(), values.shape[1])).index_add_(0, bag, values)
    if mode == "mean":
        out = out / lengths.clamp(min=1).to(out.dtype)[:, None]
    elif mode != "sum":
        raise ValueError(f"pooling {mode!r} is not one of sum, mean")
    return out


def pooled_embedding_dim(tables: list[LargeTableSpec]) -> int:
    """Width of the collection's pooled output: each feature contributes its table's dim."""
    return sum(t.embedding_dim * len(t.feature_names) for t in tables)


class SparseIdTransform(nn.Module):
    """Keeps the features the tables read (in table order) and maps their raw ids into each table's range.

    A batch may carry sparse columns no table reads; they are dropped here. Under torchrec's train pipeline this
    module is a leaf called directly on `batch.sparse`, so it can run as a pipelined post-processing step."""

    def __init__(self, tables: list[LargeTableSpec]) -> None:
        super().__init__()
        self.size_of: dict[str, int] = {}
        self.hashed: dict[str, bool] = {}
        for t in tables:
            if t.id_transform not in ("mod", "hash"):
                raise ValueError(
                    f"large embedding table {t.name!r}: id_transform {t.id_transform!r} is not mod or hash"
                )
            for name in (*t.feature_names, *t.sequence_features):
                self.size_of[name] = t.num_embeddings
                self.hashed[name] = t.id_transform == "hash"
        self.feature_names = list(self.size_of)
        self._plans: dict[tuple, tuple[list[int] | None, torch.Tensor, torch.Tensor | None, bool]] = {}
        self._key_of_length: dict[tuple, torch.Tensor] = {}

    def _plan(self, keys: list[str], device: torch.device):
        """(feature selection, size per feature, hash flag per feature or None, all hashed), cached per key list."""
        cache_key = (tuple(keys), str(device))
        if cache_key not in self._plans:
            missing = [f for f in self.feature_names if f not in keys]
            if missing:
                raise KeyError(f"sparse features {missing} are not in the batch (it has {keys})")
            select = None if keys == self.feature_names else [keys.index(f) for f in self.feature_names]
            flags = [self.hashed[f] for f in self.feature_names]
            sizes = torch.tensor(
                [self.size_of[f] for f in self.feature_names], dtype=torch.int64, device=device
            )
            hashed = torch.tensor(flags, dtype=torch.bool, device=device) if any(flags) else None
            self._plans[cache_key] = (select, sizes, hashed, all(flags))
        return self._plans[cache_key]

    def _feature_of_length(self, strides: list[int], device: torch.device) -> torch.Tensor:
        """The feature index of each entry of the KJT's lengths, cached per batch shape."""
        cache_key = (tuple(strides), str(device))
        if cache_key not in self._key_of_length:
            counts = torch.tensor(strides, dtype=torch.int64)
            self._key_of_length[cache_key] = torch.repeat_interleave(torch.arange(len(strides)), counts).to(
                device
            )
        return self._key_of_length[cache_key]

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        device = features.values().device
        select, sizes, hashed, all_hashed = self._plan(features.keys(), device)
        if select is not None:
            features = features.permute(select)
        values = features.values().to(torch.int64)
        key_of_length = self._feature_of_length(features.stride_per_key(), device)
        # The feature of every value, without a host synchronization (output_size is known).
        key_of_value = torch.repeat_interleave(key_of_length, features.lengths(), output_size=values.numel())
        if all_hashed:
            values = hash_ids(values)
        elif hashed is not None:
            values = torch.where(hashed[key_of_value], hash_ids(values), values)
        values = torch.remainder(values, sizes[key_of_value])
        variable = features.variable_stride_per_key()
        return KeyedJaggedTensor(
            keys=features.keys(),
            values=values,
            weights=features.weights_or_none(),
            lengths=features.lengths(),
            offsets=features.offsets_or_none(),
            stride=None if variable else features.stride(),
            stride_per_key_per_rank=features.stride_per_key_per_rank() if variable else None,
            length_per_key=features.length_per_key_or_none(),
            offset_per_key=features.offset_per_key_or_none(),
        )
