"""Optimizers: the dense Adam/AdamW with one learning-rate schedule per parameter group, and the tables' sparse
optimizer settings as torchrec receives them (core/sparse_optimizers.py has their maths)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from core.config import ConfigError
from core.schedules import Schedule, build_schedule
from core.sparse_optimizers import SparseOptimizerSettings, fused_optimizer
from core.train_config import DenseOptimizerConfig, SparseOptimizerConfig

SHARED_GROUP = "shared"


class DenseOptimizer:
    """Adam or AdamW over named parameter groups ("shared" plus one per tower), each following its own schedule.

    The optimizer state is created up front (zeros, step 0, exactly what Adam creates lazily on its first step) so a
    checkpoint can be loaded into it in place before training starts."""

    def __init__(
        self,
        groups: Mapping[str, list[nn.Parameter]],
        schedules: Mapping[str, Schedule],
        param_names: Mapping[nn.Parameter, str],
        decoupled_weight_decay: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        if set(groups) != set(schedules):
            raise ValueError(f"parameter groups {sorted(groups)} and schedules {sorted(schedules)} differ")
        self.schedules = dict(schedules)
        self.param_names = {p: param_names[p] for ps in groups.values() for p in ps}
        params = [p for ps in groups.values() for p in ps]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter is in two dense parameter groups")
        if fused is None:
            fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        # Empty groups (a model part without parameters) keep their schedule for logging but hold no torch group.
        torch_groups = [{"params": ps, "lr": 0.0, "name": name} for name, ps in groups.items() if ps]
        optimizer_class = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
        self.fused = fused
        self.optimizer = (
            optimizer_class(torch_groups, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
            if torch_groups
            else None
        )
        self._init_state()
        self.learning_rates = self.set_step(1)

    def _init_state(self) -> None:
        self._steps: torch.Tensor | None = None
        if self.optimizer is None:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.fused and len({(p.device, p.dtype) for p in params}) == 1:
            # Fused Adam keeps its step counters on the parameters' device. Here they are the elements of one
            # tensor, so that the fused update (_fused_step, which needs one device and dtype) counts every
            # parameter's step with one addition.
            self._steps = torch.zeros(len(params), dtype=torch.float32, device=params[0].device)
        for i, p in enumerate(params):
            state = self.optimizer.state[p]
            if self._steps is not None:
                state["step"] = self._steps[i]
            else:
                # Fused Adam keeps its step counter on the parameter's device; the unfused one on the CPU.
                step_device = p.device if self.fused else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @property
    def group_names(self) -> list[str]:
        return list(self.schedules)

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter this optimizer updates."""
        return list(self.param_names)

    def set_step(self, step: int) -> dict[str, float]:
        """Set each group's learning rate for update number `step` (from 1) and return them by group name."""
        self.learning_rates = {name: schedule(step) for name, schedule in self.schedules.items()}
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rates[group["name"]]
        return self.learning_rates

    def step(self, clip_grad_norm: float | None = None) -> torch.Tensor | None:
        """One update. With clip_grad_norm, the gradients are first scaled by min(1, clip_grad_norm / (their
        total norm + 1e-6)), as torch.nn.utils.clip_grad_norm_ does, and the total norm before clipping is returned
        (None without). The fused update applies that scale inside its kernel (as a gradient divisor), saving a pass
        over every gradient; otherwise the gradients are scaled in place first. On the CPU, where reading the norm
        costs no device synchronisation, a step whose norm is within the bound runs the update without the divisor
        (the same result: the scale is exactly 1), sparing the kernel's write-back of every divided gradient."""
        if self.optimizer is None:
            return None
        norm = divisor = None
        if clip_grad_norm is not None:
            grads = [p.grad for p in self.param_names if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            scale = torch.clamp(clip_grad_norm / (norm + 1e-6), max=1.0)
            if norm.device.type != "cpu" or not bool(scale == 1.0):
                divisor = scale.reciprocal()
        if not self._fused_step(grad_divisor=divisor):
            if divisor is not None:
                torch.nn.utils.clip_grads_with_norm_(grads, clip_grad_norm, norm)
            self.optimizer.step()
        return norm

    def _fused_step(self, grad_divisor: torch.Tensor | None = None) -> bool:
        """The fused optimizer's update as torch's Adam makes it (the same kernel, `torch._fused_adam_` or
        `_fused_adamw_`, on the same tensors), one call per distinct learning rate instead of one pass of torch's
        per-group Python per group (0.65 -> 0.25 ms a step for the demo's 78 parameters in 11 groups).
        False, having changed nothing, where torch's own step must run: not fused, a parameter without a gradient,
        a sparse gradient, or parameters of several devices or dtypes. grad_divisor (a 0-dim tensor on the
        parameters' device) divides every gradient inside the kernel."""
        if self._steps is None:
            return False
        assert self.optimizer is not None
        state = self.optimizer.state
        calls: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
        for group in self.optimizer.param_groups:
            if group["amsgrad"] or group["maximize"] or group["differentiable"] or torch.is_tensor(group["lr"]):
                return False
            key = (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["decoupled_weight_decay"])
            tensors = calls.setdefault(key, ([], [], [], [], []))
            for p in group["params"]:
                grad = p.grad
                if grad is None or grad.is_sparse:
                    return False
                s = state[p]
                tensors[0].append(p)
                tensors[1].append(grad)
                tensors[2].append(s["exp_avg"])
                tensors[3].append(s["exp_avg_sq"])
                tensors[4].append(s["step"])
        self._steps.add_(1)  # every parameter's step (each has its gradient)
        for (lr, (beta1, beta2), eps, weight_decay, decoupled), (ps, grads, m, v, steps) in calls.items():
            kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
            kernel(ps, grads, m, v, [], steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                   weight_decay=weight_decay, eps=eps, maximize=False, grad_scale=grad_divisor, found_inf=None)
        return True

    def zero_grad(self) -> None:
        """Drop every gradient (set to None, as torch's zero_grad(set_to_none=True), without its per-group pass)."""
        for p in self.param_names:
            p.grad = None

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """{parameter name: {state name: tensor}}: the live state tensors (load into them in place)."""
        if self.optimizer is None:
            return {}
        return {self.param_names[p]: dict(state) for p, state in self.optimizer.state.items()}


def _schedules_for(
    groups: Iterable[str], config: DenseOptimizerConfig, total_steps: int | None
) -> dict[str, Schedule]:
    names = list(groups)
    if config.learning_rate is not None:
        schedule = build_schedule(config.learning_rate, total_steps)
        return {name: schedule for name in names}
    mtl = config.multi_task_learning_rates
    assert mtl is not None  # DenseOptimizerConfig requires one of the two
    towers = [n for n in names if n != SHARED_GROUP]
    if set(mtl.tower_learning_rates) != set(towers):
        raise ConfigError(
            "optimizer.dense.multi_task_learning_rates.tower_learning_rates must name exactly the model's tasks "
            f"{towers}: unknown {sorted(set(mtl.tower_learning_rates) - set(towers))}, "
            f"missing {sorted(set(towers) - set(mtl.tower_learning_rates))}"
        )
    schedules = {name: build_schedule(mtl.tower_learning_rates[name], total_steps) for name in towers}
    if SHARED_GROUP in names:
        schedules[SHARED_GROUP] = build_schedule(mtl.backbone_learning_rate, total_steps)
    return {name: schedules[name] for name in names}


def check_schedules(config: DenseOptimizerConfig, total_steps: int | None, key: str = "optimizer.dense") -> None:
    """Build every configured learning-rate schedule for a training of total_steps: one that does not fit the
    training's length is a ConfigError naming its key, raised before any model is built."""
    if config.learning_rate is not None:
        schedules = {f"{key}.learning_rate": config.learning_rate}
    else:
        mtl = config.multi_task_learning_rates
        assert mtl is not None  # DenseOptimizerConfig requires one of the two
        prefix = f"{key}.multi_task_learning_rates"
        schedules = {f"{prefix}.tower_learning_rates.{t}": c for t, c in mtl.tower_learning_rates.items()}
        schedules[f"{prefix}.backbone_learning_rate"] = mtl.backbone_learning_rate
    for path, schedule in schedules.items():
        try:
            build_schedule(schedule, total_steps)
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}") from None


def build_dense_optimizer(
    model: nn.Module,
    groups: Mapping[str, list[nn.Parameter]],
    config: DenseOptimizerConfig,
    total_steps: int | None = None,
) -> DenseOptimizer:
    """The configured Adam/AdamW over `groups` ({"shared": [...], <tower>: [...]}), one schedule per group;
    configured tower names must equal the groups' tower names (ConfigError otherwise). total_steps, the training's
    length when known, ends the cosine schedules that leave final_num_steps out."""
    adam = config.adam if config.adam is not None else config.adamw
    assert adam is not None  # DenseOptimizerConfig validates exactly one of adam, adamw
    names = {p: n for n, p in model.named_parameters()}
    if any(p not in names for ps in groups.values() for p in ps):
        raise ValueError("a dense parameter group holds parameters that are not in the model")
    return DenseOptimizer(
        groups,
        _schedules_for(groups, config, total_steps),
        names,
        decoupled_weight_decay=config.adamw is not None,
        betas=(adam.beta_1, adam.beta_2),
        eps=adam.epsilon,
        weight_decay=adam.weight_decay,
    )


def sparse_settings(config: SparseOptimizerConfig, learning_rate: float | None = None) -> SparseOptimizerSettings:
    """The plain settings of optimizer.sparse (resolved by its validator), with a table's own learning rate."""
    values = {k: v for k, v in config.model_dump().items() if v is not None}
    if learning_rate is not None:
        values["learning_rate"] = learning_rate
    return SparseOptimizerSettings(**values)


def apply_sparse_optimizer(
    tables: Mapping[str, nn.Parameter], settings: Mapping[str, SparseOptimizerSettings]
) -> None:
    """Attach each table's optimizer to its (unsharded) weight; DistributedModelParallel fuses it into the backward
    pass of the model-parallel tables. Data-parallel tables are updated by the RowSparseOptimizer instead
    (core/sparse_optimizers.py), with the same settings."""
    from torchrec.optim.apply_optimizer_in_backward import (
        apply_optimizer_in_backward,  # only where tables exist
    )

    for name, weight in tables.items():
        optimizer_class, kwargs = fused_optimizer(settings[name])
        apply_optimizer_in_backward(optimizer_class, [weight], kwargs)
