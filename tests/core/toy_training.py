"""A toy two-task model with one sharded embedding table, in-memory resumable batches, and the wiring the core
training tests share (also imported by the torchrun worker script next to this file)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from core.config import load_config
from core.distributed import DistributedContext, shard_model
from core.optimizers import SHARED_GROUP, apply_sparse_optimizer, build_dense_optimizer, sparse_settings
from core.rng_state import seed_everything
from core.sparse_optimizers import build_sparse_optimizers
from core.table_placement import TablePlacement, planner_constraints
from core.train_config import OptimizerConfig, TrainingConfig, total_train_steps
from core.train_loop import TrainLoop

TASKS = ("click", "like")
NUM_IDS = 40  # ids the batches use
# Rows of the embedding table: large enough that the planner shards it (table-wise) instead of replicating it.
TABLE_ROWS = 50_000
FEATURES = 4


@dataclass
class ToyBatch:
    ids: KeyedJaggedTensor
    x: torch.Tensor  # [B, FEATURES]
    labels: torch.Tensor  # [B, T]
    weights: torch.Tensor  # [B, T]

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = False) -> ToyBatch:
        return ToyBatch(self.ids.to(device), self.x.to(device), self.labels.to(device), self.weights.to(device))


class ToyModel(nn.Module):
    """Pooled id embedding + features -> shared layer -> one logit per task; weighted BCE per task."""

    def __init__(self, with_table: bool = True, embedding_dim: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.tables = None
        if with_table:
            self.tables = EmbeddingBagCollection(
                tables=[EmbeddingBagConfig(name="ids", feature_names=["id"], num_embeddings=TABLE_ROWS,
                                           embedding_dim=embedding_dim)],
                device=torch.device("meta"),
            )
        self.shared = nn.Linear(FEATURES + (embedding_dim if with_table else 0), 8)
        self.dropout = nn.Dropout(dropout)
        self.task_modules = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})

    def forward(self, batch: ToyBatch):
        x = batch.x if self.tables is None else torch.cat([batch.x, self.tables(batch.ids).values()], dim=1)
        h = self.dropout(torch.relu(self.shared(x)))
        logits = torch.cat([m(h) for m in self.task_modules.values()], dim=1).float()
        per_row = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none") * batch.weights
        task_losses = per_row.sum(0) / batch.weights.sum(0).clamp_min(1e-12)
        return task_losses.sum(), {"task_losses": task_losses.detach(), "logits": logits}


def toy_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups: dict[str, list[nn.Parameter]] = {SHARED_GROUP: [], **{t: [] for t in TASKS}}
    for name, p in model.named_parameters():
        if "tables." in name:
            continue
        task = next((t for t in TASKS if f"task_modules.{t}." in name), SHARED_GROUP)
        groups[task].append(p)
    return groups


def make_batch(seed: int, batch_size: int = 16) -> ToyBatch:
    """A deterministic batch: labels depend on the features and on the id (one id per row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, FEATURES, generator=g)
    ids = torch.randint(0, NUM_IDS, (batch_size,), generator=g)
    id_effect = torch.sin(ids.float())[:, None] * torch.tensor([1.5, -1.0])
    logits = x[:, :2] * torch.tensor([2.0, -1.0]) + id_effect
    labels = torch.bernoulli(torch.sigmoid(logits), generator=g)
    kjt = KeyedJaggedTensor(keys=["id"], values=ids, lengths=torch.ones(batch_size, dtype=torch.int64))
    return ToyBatch(kjt, x, labels, torch.ones_like(labels))


class ToyData:
    """batches_per_epoch deterministic batches per (epoch, rank), with a resumable position."""

    def __init__(self, rank: int = 0, batches_per_epoch: int = 6, batch_size: int = 16, seed: int = 0) -> None:
        self.rank, self.batches_per_epoch, self.batch_size, self.seed = rank, batches_per_epoch, batch_size, seed
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        while self.position < self.batches_per_epoch:
            seed = ((self.seed * 1000 + self.epoch) * 100 + self.rank) * 1000 + self.position
            self.position += 1
            yield make_batch(seed, self.batch_size)


def training_config(save_dir, **overrides) -> TrainingConfig:
    values = {"save_dir": str(save_dir), "num_train_steps": 8, "train_log_every_n": 2, "checkpoint_every_n": 4,
              "keep_last_k": 2}
    values.update(overrides)
    if "num_epochs" in overrides:
        values.pop("num_train_steps")
    return load_config(None, TrainingConfig, data=values)


def optimizer_config(**dense) -> OptimizerConfig:
    data = {"dense": {"adam": {}, "learning_rate": {"constant": 0.01}, **dense},
            "sparse": {"type": "rowwise_adagrad", "learning_rate": 0.1}}
    return load_config(None, OptimizerConfig, data=data)


def build_loop(ctx: DistributedContext, config: TrainingConfig, optim: OptimizerConfig | None = None,
               data=None, evaluate=None, dropout: float = 0.0, with_table: bool = True,
               sharding: str = "auto") -> TrainLoop:
    """Seeded toy model sharded with DistributedModelParallel, its optimizers and a TrainLoop over ToyData."""
    optim = optim or optimizer_config()
    seed_everything(config.seed)
    model = ToyModel(with_table=with_table, dropout=dropout)
    settings, constraints = {}, None
    if model.tables is not None:
        weights = {name: bag.weight for name, bag in model.tables.embedding_bags.items()}
        settings = {name: sparse_settings(optim.sparse) for name in weights}
        apply_sparse_optimizer(weights, settings)
        constraints = planner_constraints({name: TablePlacement(sharding) for name in weights}, settings,
                                          ctx.device.type)
    dmp = shard_model(model, ctx, batch_size=16, static_graph=config.gradient_accumulation_steps == 1,
                      constraints=constraints)
    data = data if data is not None else ToyData(rank=ctx.rank)
    # As the recap trainer does: the training's length (known from the data's epoch size) ends cosine schedules.
    steps_per_epoch = len(data)
    dense = build_dense_optimizer(dmp, toy_groups(dmp), optim.dense, total_train_steps(config, steps_per_epoch))
    return TrainLoop(dmp, dense, data, config, ctx, task_names=TASKS,
                     sparse_optimizer=build_sparse_optimizers(dmp, settings) if with_table else None, evaluate=evaluate,
                     steps_per_epoch=steps_per_epoch)


def parameters(loop: TrainLoop) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, as full CPU tensors (sharded tables gathered from one rank)."""
    out = {}
    for name, value in loop.model.state_dict().items():
        if hasattr(value, "local_shards"):
            shards = value.local_shards()
            value = torch.cat([s.tensor for s in shards]) if shards else torch.empty(0)
        out[name] = value.detach().cpu().clone()
    return out


def all_state(loop: TrainLoop) -> dict[str, torch.Tensor]:
    """Every trained tensor of a toy loop: parameters, dense optimizer state and the tables' optimizer state."""
    state = {f"param/{k}": v for k, v in parameters(loop).items()}
    for name, entries in loop.dense_optimizer.state_tensors().items():
        for key, value in entries.items():
            state[f"dense/{name}/{key}"] = value.detach().cpu().clone()
    if loop.sparse_optimizer is not None:
        for name, entries in loop.sparse_optimizer.state_dict()["state"].items():
            for key, value in entries.items():
                state[f"sparse/{name}/{key}"] = torch.cat([s.tensor for s in value.local_shards()]).clone()
    return state


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal keys and tensors to 1e-6."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")
