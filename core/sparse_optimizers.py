"""Optimizers of the large embedding tables.

Two ways to update a table, chosen per table by where it is computed:
- fused: fbgemm's kernel applies the optimizer inside the backward pass (model-parallel tables: table_wise, row_wise,
  column_wise, ...). It exists for sgd, adagrad and rowwise_adagrad on CPU and GPU, and adam on GPU; fbgemm's CPU
  kernels ignore weight decay, and its GPU kernels have it for rowwise_adagrad and (decoupled) adam only.
- row-sparse: data_parallel tables (fbgemm's dense kernel) get an ordinary gradient; `RowSparseOptimizer` applies
  the same maths after backward, to the rows whose gradient is non-zero (the rows the step looked up), and leaves
  every other row and its state as they are. Any optimizer and weight decay runs here, on any device.
A table whose settings the fused kernel on its device cannot run is kept data_parallel (see `fused_unsupported`).

The maths, per updated row w with gradient g (summed over the row's occurrences in the batch), step t from 1:
  l2 weight decay:        g <- g + wd * w                   (before the update)
  sgd:                    w <- w - lr * g
  adagrad:                s <- s + g^2;            w <- w - lr * g / (sqrt(s) + eps)
  rowwise_adagrad:        s <- s + mean_d(g^2);    w <- w - lr * g / (sqrt(s) + eps)     (one s per row)
  adam:                   m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
                          w <- w - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
  decoupled weight decay: w <- w - lr * wd * w_before        (added to the update)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

SPARSE_OPTIMIZER_TYPES = ("sgd", "adagrad", "rowwise_adagrad", "adam")


@dataclass(frozen=True)
class SparseOptimizerSettings:
    """One table's optimizer: its type and hyper-parameters (see the module docstring for the maths)."""

    type: str = "adam"
    learning_rate: float = 0.001
    epsilon: float = 1e-8
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 0.0
    weight_decay_mode: str = "decoupled"

    def __post_init__(self) -> None:
        if self.type not in SPARSE_OPTIMIZER_TYPES:
            raise ValueError(f"sparse optimizer {self.type!r} is not one of {', '.join(SPARSE_OPTIMIZER_TYPES)}")
        if self.weight_decay_mode not in ("decoupled", "l2"):
            raise ValueError(f"weight_decay_mode {self.weight_decay_mode!r} is not decoupled or l2")


def fused_unsupported(settings: SparseOptimizerSettings, device_type: str) -> str | None:
    """None when fbgemm's fused kernel on `device_type` runs `settings` exactly, else why it cannot."""
    if device_type == "cpu":
        if settings.type == "adam":
            return "fbgemm's CPU kernels have no Adam"
        if settings.weight_decay > 0:
            return "fbgemm's CPU kernels ignore weight decay"
        return None
    if settings.weight_decay > 0:
        if settings.type == "rowwise_adagrad" or (settings.type == "adam" and settings.weight_decay_mode == "decoupled"):
            return None
        return f"fbgemm's GPU kernels have no {settings.weight_decay_mode} weight decay for {settings.type}"
    return None


def fused_optimizer(settings: SparseOptimizerSettings) -> tuple[type, dict[str, Any]]:
    """(torchrec optimizer class, keyword arguments) for apply_optimizer_in_backward: what fbgemm's fused kernel
    receives for these settings."""
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
    from torchrec import optim as trec_optim

    kwargs: dict[str, Any] = {"lr": settings.learning_rate}
    if settings.type != "sgd":
        kwargs["eps"] = settings.epsilon
    if settings.weight_decay > 0:
        mode = WeightDecayMode.L2 if settings.weight_decay_mode == "l2" else WeightDecayMode.DECOUPLE
        kwargs.update(weight_decay=settings.weight_decay, weight_decay_mode=mode)
    if settings.type == "adam":
        kwargs.update(beta1=settings.beta_1, beta2=settings.beta_2)
        return trec_optim.Adam, kwargs
    classes = {"sgd": trec_optim.SGD, "adagrad": trec_optim.Adagrad, "rowwise_adagrad": trec_optim.RowWiseAdagrad}
    return classes[settings.type], kwargs


def _zero_state(settings: SparseOptimizerSettings, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    # Named as fbgemm names the fused kernels' state (momentum1: adagrad's sums or Adam's first moment, momentum2:
    # Adam's second moment), prefixed with the table name below, so one checkpoint serves either kind of plan.
    if settings.type == "adagrad":
        return {"momentum1": torch.zeros_like(weight)}
    if settings.type == "rowwise_adagrad":
        return {"momentum1": torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)}
    if settings.type == "adam":
        return {
            "momentum1": torch.zeros_like(weight),
            "momentum2": torch.zeros_like(weight),
            "step": torch.zeros((), dtype=torch.float32, device=weight.device),
        }
    return {}


class RowSparseOptimizer(KeyedOptimizer):
    """The configured optimizer over whole-table gradients (data_parallel tables), updating only the rows whose
    gradient is non-zero. Call `step()` after backward and `zero_grad()` after it; state is keyed by parameter name
    like torchrec's fused optimizers, so checkpoints hold both the same way."""

    def __init__(self, params: Mapping[str, nn.Parameter], settings: Mapping[str, SparseOptimizerSettings]) -> None:
        missing = sorted(set(params) - set(settings))
        if missing:
            raise ValueError(f"no sparse optimizer settings for {missing}")
        self.settings = {p: settings[name] for name, p in params.items()}
        self.prefix = {p: f"{_table_of(name) or name}." for name, p in params.items()}
        state = {
            p: {self.prefix[p] + key: value for key, value in _zero_state(settings[name], p).items()}
            for name, p in params.items()
        }
        groups = [{"params": [p], "lr": settings[name].learning_rate} for name, p in params.items()]
        super().__init__(dict(params), state, groups)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group["lr"])

    def _update(self, weight: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        s = self.settings[weight]
        rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        prefix, table_state = self.prefix[weight], self.state[weight]
        state = {key[len(prefix):]: value for key, value in table_state.items()}
        w = weight[rows]
        g = grad[rows].to(w.dtype)
        if s.weight_decay > 0 and s.weight_decay_mode == "l2":
            g = g + s.weight_decay * w
        if s.type == "sgd":
            update = g
        elif s.type == "adagrad":
            total = state["momentum1"][rows] + g * g
            state["momentum1"][rows] = total
            update = g / (total.sqrt() + s.epsilon)
        elif s.type == "rowwise_adagrad":
            total = state["momentum1"][rows] + (g * g).mean(dim=1)
            state["momentum1"][rows] = total
            update = g / (total.sqrt() + s.epsilon)[:, None]
        else:
            state["step"] += 1
            t = float(state["step"])
            m = state["momentum1"][rows].mul_(s.beta_1).add_(g, alpha=1 - s.beta_1)
            v = state["momentum2"][rows].mul_(s.beta_2).addcmul_(g, g, value=1 - s.beta_2)
            state["momentum1"][rows] = m
            state["momentum2"][rows] = v
            update = (m / (1 - s.beta_1**t)) / ((v / (1 - s.beta_2**t)).sqrt() + s.epsilon)
        if s.weight_decay > 0 and s.weight_decay_mode == "decoupled":
            update = update + s.weight_decay * w
        weight[rows] = w - lr * update

    def zero_grad(self, set_to_none: bool = False) -> None:  # noqa: D102
        # The gradients of data-parallel tables are views into DDP's buckets: zero them, never drop them.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


class SparseOptimizers:
    """The fused optimizers of the model-parallel tables and the row-sparse one of the data-parallel tables, seen as
    one: a state dict keyed by parameter name, a `step()` to call after each backward pass's dense update."""

    def __init__(self, fused: KeyedOptimizer | None, row_sparse: RowSparseOptimizer | None) -> None:
        self.fused = fused
        self.row_sparse = row_sparse

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for optimizer in (self.fused, self.row_sparse):
            if optimizer is not None:
                state.update(optimizer.state_dict()["state"])
        return {"state": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = state_dict["state"]
        for optimizer in (self.fused, self.row_sparse):
            if optimizer is not None:
                own = optimizer.state_dict()["state"]
                optimizer.load_state_dict({"state": {k: state[k] for k in own}})

    def step(self) -> None:
        """Apply the row-sparse update (the fused tables were updated inside backward)."""
        if self.row_sparse is not None:
            self.row_sparse.step()
            self.row_sparse.zero_grad()


def _table_of(parameter_name: str) -> str | None:
    """The table name in `....embedding_bags.<table>.weight` (an EmbeddingBagCollection's) or
    `....embeddings.<table>.weight` (an EmbeddingCollection's), else None."""
    parts = parameter_name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-3] in ("embedding_bags", "embeddings"):
        return parts[-2]
    return None


def build_sparse_optimizers(
    model: nn.Module, settings: Mapping[str, SparseOptimizerSettings]
) -> SparseOptimizers:
    """The sparse optimizers of a DistributedModelParallel: its fused optimizer, and a RowSparseOptimizer over the
    tables the plan made data_parallel (their weights carry no in-backward optimizer)."""
    row_sparse_params: dict[str, nn.Parameter] = {}
    row_sparse_settings: dict[str, SparseOptimizerSettings] = {}
    for name, param in model.named_parameters():
        table = _table_of(name)
        if table is None or table not in settings or hasattr(param, "_in_backward_optimizers"):
            continue
        row_sparse_params[name] = param
        row_sparse_settings[name] = settings[table]
    fused = getattr(model, "fused_optimizer", None)
    row_sparse = RowSparseOptimizer(row_sparse_params, row_sparse_settings) if row_sparse_params else None
    return SparseOptimizers(fused, row_sparse)
