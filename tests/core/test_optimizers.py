"""Optimizer settings as torch and torchrec receive them: the dense Adam/AdamW hyper-parameters, the sparse
optimizer's type, learning rate and epsilon, and the config errors for settings an optimizer has no use for."""

import pytest
import torch
import yaml
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec.optim import SGD as FusedSGD
from torchrec.optim import Adagrad as FusedAdagrad
from torchrec.optim import Adam as FusedAdam
from torchrec.optim import RowWiseAdagrad

from core.config import ConfigError, dump_yaml, load_config
from core.optimizers import apply_sparse_optimizer, build_dense_optimizer, sparse_settings
from core.train_config import OptimizerConfig, SparseOptimizerConfig

DENSE = {"learning_rate": {"constant": 0.1}}
SETTINGS = {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-5, "weight_decay": 0.3}


def _optimizer(data: dict) -> OptimizerConfig:
    return load_config(None, OptimizerConfig, data=data)


@pytest.mark.parametrize("kind, torch_class", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_dense_adam_settings_reach_the_torch_optimizer(kind, torch_class):
    model = torch.nn.Linear(2, 1)
    config = _optimizer({"dense": {kind: SETTINGS, **DENSE}}).dense
    optimizer = build_dense_optimizer(model, {"shared": list(model.parameters())}, config).optimizer
    assert type(optimizer) is torch_class
    (group,) = optimizer.param_groups
    assert (group["betas"], group["eps"], group["weight_decay"], group["lr"]) == ((0.8, 0.95), 1e-5, 0.3, 0.1)


def test_dense_adam_step_uses_the_configured_betas_and_epsilon():
    # Two Adam steps on one weight with gradients 1 then 3 (no weight decay), computed by hand:
    # m = (1 - b1) g accumulated, v likewise with b2, update = lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    b1, b2, eps, lr = 0.5, 0.75, 0.5, 0.1
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    model = torch.nn.Module()
    model.p = param
    config = _optimizer({"dense": {"adam": {"beta_1": b1, "beta_2": b2, "epsilon": eps}, **DENSE}}).dense
    optimizer = build_dense_optimizer(model, {"shared": [param]}, config)
    expected, m, v = 0.0, 0.0, 0.0
    for t, g in enumerate((1.0, 3.0), start=1):
        param.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + eps)
        assert param.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "sparse, fused_class, kwargs",
    [
        ({"type": "adam", "learning_rate": 0.3, "epsilon": 1e-4, "beta_2": 0.99}, FusedAdam,
         {"lr": 0.3, "eps": 1e-4, "beta1": 0.9, "beta2": 0.99}),
        ({"type": "rowwise_adagrad", "learning_rate": 0.2}, RowWiseAdagrad, {"lr": 0.2, "eps": 1e-8}),
        ({"type": "rowwise_adagrad", "learning_rate": 0.2, "weight_decay": 0.01, "weight_decay_mode": "l2"},
         RowWiseAdagrad, {"lr": 0.2, "eps": 1e-8, "weight_decay": 0.01, "weight_decay_mode": WeightDecayMode.L2}),
        ({"type": "adagrad", "learning_rate": 0.4}, FusedAdagrad, {"lr": 0.4, "eps": 1e-8}),
        ({"type": "sgd", "learning_rate": 0.7}, FusedSGD, {"lr": 0.7}),
    ],
)
def test_sparse_settings_are_handed_to_the_fused_optimizer(sparse, fused_class, kwargs):
    config = _optimizer({"dense": {"adam": {}, **DENSE}, "sparse": sparse}).sparse
    table = torch.nn.Parameter(torch.zeros(4, 2))
    apply_sparse_optimizer({"t": table}, {"t": sparse_settings(config)})
    # What DistributedModelParallel reads to build the fused optimizer of the sharded table.
    assert table._optimizer_classes == [fused_class]
    assert table._optimizer_kwargs == [kwargs]


def test_sparse_epsilon_with_sgd_is_a_config_error():
    with pytest.raises(ConfigError, match="sparse: epsilon is meaningless for type sgd"):
        _optimizer({"dense": {"adam": {}, **DENSE}, "sparse": {"type": "sgd", "epsilon": 1e-6}})
    sgd = _optimizer({"dense": {"adam": {}, **DENSE}, "sparse": {"type": "sgd"}})
    assert sgd.sparse.epsilon is None
    # The resolved config (as training writes it next to its checkpoints) loads again.
    assert _optimizer(yaml.safe_load(dump_yaml(sgd))) == sgd
    assert SparseOptimizerConfig(type="adam").epsilon == 1e-8


def test_adam_moments_with_another_type_are_a_config_error():
    with pytest.raises(ConfigError, match="beta_1 and beta_2 are Adam's settings"):
        _optimizer({"dense": {"adam": {}, **DENSE}, "sparse": {"type": "rowwise_adagrad", "beta_1": 0.8}})
    adam = _optimizer({"dense": {"adam": {}, **DENSE}, "sparse": {"type": "adam"}})
    assert (adam.sparse.beta_1, adam.sparse.beta_2) == (0.9, 0.999)
    assert _optimizer(yaml.safe_load(dump_yaml(adam))) == adam


def _towers() -> tuple[torch.nn.Module, dict[str, list[torch.nn.Parameter]]]:
    model = torch.nn.ModuleDict({"shared": torch.nn.Linear(4, 3), "a": torch.nn.Linear(3, 1), "b": torch.nn.Linear(3, 1)})
    return model, {name: list(module.parameters()) for name, module in model.items()}


def _train(optimizer, model: torch.nn.Module, steps: int, drop_grad: str | None = None) -> None:
    g = torch.Generator().manual_seed(3)
    for step in range(1, steps + 1):
        optimizer.set_step(step)
        x = torch.randn(8, 4, generator=g)
        hidden = model["shared"](x)
        (model["a"](hidden).square().mean() + model["b"](hidden).abs().mean()).backward()
        if drop_grad is not None and step == 2:
            getattr(model, drop_grad).weight.grad = None
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("kind", ["adam", "adamw"])
@pytest.mark.parametrize("drop_grad", [None, "a"])
def test_the_fused_update_equals_torchs_step_with_a_learning_rate_per_group(kind, drop_grad):
    # The fused update calls torch's kernel once per learning rate (towers "a" and "b" share one, the backbone has
    # another, with a warm-up that changes it each step), bypassing torch's per-group loop: the parameters and the
    # optimizer state after five steps must be torch's own, bit for bit. A parameter without a gradient at one
    # step (drop_grad) sends that step through torch's own step.
    rates = {"tower_learning_rates": {"a": {"constant": 0.05}, "b": {"constant": 0.05}},
             "backbone_learning_rate": {"linear_ramp_to_constant": {"learning_rate": 0.1, "num_ramp_steps": 3}}}
    config = _optimizer({"dense": {kind: {"weight_decay": 0.1}, "multi_task_learning_rates": rates}}).dense
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        model, groups = _towers()
        optimizer = build_dense_optimizer(model, groups, config)
        if not fast:
            optimizer._fused_step = lambda grad_divisor=None: False  # torch's own optimizer.step()
        _train(optimizer, model, steps=5, drop_grad=drop_grad)
        results.append(({k: v.clone() for k, v in model.state_dict().items()},
                        {n: {k: v.clone() for k, v in t.items()} for n, t in optimizer.state_tensors().items()}))
        if fast:  # the fast path is the one taken when every parameter has its gradient
            model["b"](model["shared"](torch.ones(1, 4))).sum().backward()
            model["a"](torch.ones(1, 3)).sum().backward()
            assert optimizer._fused_step()
    (params, state), (torch_params, torch_state) = results
    for name, value in torch_params.items():
        assert torch.equal(params[name], value), name
    for name, tensors in torch_state.items():
        for key, value in tensors.items():
            assert torch.equal(state[name][key], value), (name, key)
    assert {t["step"].item() for t in state.values()} == ({5.0} if drop_grad is None else {4.0, 5.0})


@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_clipping_inside_the_fused_update_equals_clip_grad_norm_then_torchs_step(clip):
    # A large epsilon makes Adam's update depend on the gradients' scale, so a clipping that is not applied, or
    # applied twice, moves the parameters elsewhere. With 1e3 nothing is clipped (scale 1).
    config = _optimizer({"dense": {"adam": {"epsilon": 1e-2}, **DENSE}}).dense
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        model, groups = _towers()
        optimizer = build_dense_optimizer(model, groups, config)
        norms = []
        for step in range(1, 4):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            model["a"](model["shared"](x)).square().mean().backward()
            model["b"](model["shared"](x)).abs().mean().backward()
            if fast:
                norms.append(optimizer.step(clip_grad_norm=clip))
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(optimizer.parameters(), clip))
                optimizer.optimizer.step()
            optimizer.zero_grad()
        results.append((model.state_dict(), torch.stack(norms)))
    (params, norms), (torch_params, torch_norms) = results
    torch.testing.assert_close(norms, torch_norms, rtol=0, atol=0)
    assert (norms > 1e-3).all()
    for name, value in torch_params.items():
        torch.testing.assert_close(params[name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("clip, divided", [(1e3, False), (1e-3, True)])
def test_a_clip_that_does_not_bite_runs_the_fused_update_without_a_divisor(monkeypatch, clip, divided):
    # On the CPU the norm is read: within the bound the kernel gets no divisor (scale exactly 1, the same update
    # without rewriting every gradient); beyond it the divisor is the clipping's 1 / scale.
    model, groups = _towers()
    optimizer = build_dense_optimizer(model, groups, _optimizer({"dense": {"adam": {}, **DENSE}}).dense)
    divisors = []
    kernel = torch._fused_adam_

    def recording(*args, grad_scale=None, **kwargs):
        divisors.append(grad_scale)
        return kernel(*args, grad_scale=grad_scale, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", recording)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    model["a"](model["shared"](x)).square().mean().backward()
    model["b"](model["shared"](x)).abs().mean().backward()
    norm = optimizer.step(clip_grad_norm=clip)
    assert divisors and all((d is not None) == divided for d in divisors)
    if divided:
        torch.testing.assert_close(divisors[0], norm / clip, rtol=1e-5, atol=0)
