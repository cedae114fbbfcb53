"""Two small embedding tables sharded by DistributedModelParallel under a forced sharding type, with full-table
read/write helpers, for the sharding and sparse-optimizer tests (run in 1 or 2 gloo processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from core.distributed import DistributedContext, shard_model
from core.optimizers import apply_sparse_optimizer
from core.sparse_optimizers import SparseOptimizers, SparseOptimizerSettings, build_sparse_optimizers
from core.table_placement import TablePlacement, planner_constraints

# (name, feature, rows, dim, pooling): a mean-pooled and a sum-pooled table; dims divisible for column-wise shards.
TABLES = (("users", "user", 24, 8, "mean"), ("tags", "tag", 16, 8, "sum"))
FEATURES = [feature for _, feature, _, _, _ in TABLES]


class TwoTables(nn.Module):
    """Pooled embeddings of two id features, reduced to a scalar loss with fixed column weights."""

    def __init__(self) -> None:
        super().__init__()
        pooling = {"mean": PoolingType.MEAN, "sum": PoolingType.SUM}
        self.tables = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=n, feature_names=[f], num_embeddings=r, embedding_dim=d,
                                       pooling=pooling[p]) for n, f, r, d, p in TABLES],
            device=torch.device("meta"),
        )

    def forward(self, ids: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.tables(ids).values()
        return loss_of(pooled)


def loss_of(pooled: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per column and per row: sum of pooled * c + 0.5 * pooled^2."""
    c = torch.linspace(-1.0, 1.0, pooled.shape[1])
    return (pooled * c + 0.5 * pooled * pooled).sum()


def initial_table(rows: int, dim: int, salt: int) -> torch.Tensor:
    """Deterministic distinct starting weights."""
    generator = torch.Generator().manual_seed(1000 + salt)
    return torch.randn(rows, dim, generator=generator) * 0.5


def batch(rank: int, step: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(user ids, user lengths, tag ids, tag lengths) of a 3-row batch; ranks and steps share some ids."""
    users = [1, 2, 2, 5 + rank, 7 + step]
    user_lengths = [2, 1, 2]
    tags = [3, 4 + rank, 3, 9, 3 + step]
    tag_lengths = [1, 3, 1]
    return users, user_lengths, tags, tag_lengths


def kjt(rank: int, step: int) -> KeyedJaggedTensor:
    users, ul, tags, tl = batch(rank, step)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES, values=torch.tensor(users + tags), lengths=torch.tensor(ul + tl)
    )


def build(ctx: DistributedContext, sharding: str, settings: SparseOptimizerSettings
          ) -> tuple[nn.Module, SparseOptimizers]:
    """TwoTables sharded with every table pinned to `sharding`, its weights set to `initial_table`."""
    model = TwoTables()
    names = [n for n, *_ in TABLES]
    per_table = {n: settings for n in names}
    apply_sparse_optimizer({n: model.tables.embedding_bags[n].weight for n in names}, per_table)
    constraints = planner_constraints({n: TablePlacement(sharding) for n in names}, per_table, ctx.device.type)
    dmp = shard_model(model, ctx, batch_size=3, constraints=constraints)
    for i, (name, _, rows, dim, _) in enumerate(TABLES):
        write_table(dmp, name, initial_table(rows, dim, i))
    return dmp, build_sparse_optimizers(dmp, per_table)


def _table_tensor(dmp: nn.Module, name: str):
    key = next(k for k in dmp.state_dict() if k.endswith(f"embedding_bags.{name}.weight"))
    return dmp.state_dict()[key]


def _shards(value) -> list[tuple[list[int], torch.Tensor]]:
    """(offsets, local tensor) of each local shard; a replicated tensor is one shard at the origin."""
    if hasattr(value, "local_shards"):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in value.local_shards()]
    return [([0, 0], value)]


def read_table(dmp: nn.Module, name: str, rows: int, dim: int) -> torch.Tensor:
    """The full table, gathered from every rank's shards (collective)."""
    value = _table_tensor(dmp, name)
    full = torch.zeros(rows, dim)
    replicated = not hasattr(value, "local_shards")
    for (r, c), t in _shards(value):
        full[r : r + t.shape[0], c : c + t.shape[1]] = t.detach()
    if dist.get_world_size() > 1 and not replicated:
        dist.all_reduce(full)
    return full


def write_table(dmp: nn.Module, name: str, full: torch.Tensor) -> None:
    """Set the table's weights from a full tensor (each rank writes its shards)."""
    with torch.no_grad():
        for (r, c), t in _shards(_table_tensor(dmp, name)):
            t.copy_(full[r : r + t.shape[0], c : c + t.shape[1]])


def train_steps(dmp: nn.Module, optimizers: SparseOptimizers, rank: int, steps: int) -> None:
    """`steps` forward/backward passes, each followed by the row-sparse step (as the training loop does)."""
    for step in range(steps):
        dmp(kjt(rank, step)).backward()
        optimizers.step()
