"""Task towers of one architecture run as one grouped computation: the same logits and gradients as the heads one
by one (shared input, expert mixtures, deeper towers, affine maps, bf16), the same state_dict; off by default, and
refused where it does not apply (batch norm, other architectures, different widths); TorchScript runs them one by
one."""

from __future__ import annotations

import copy

import pytest
import torch

from core.config import ConfigError
from projects.home.recap.model import dense as dense_module
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.synthetic_batch import random_batch

TOWERS = {
    "fav": {"mlp_config": {"layer_sizes": [8, 6]}},
    "report": {"mlp_config": {"layer_sizes": [8, 6]}, "affine_map": {"scale": 2.0, "bias": -1.0}},
    "reply": {"mlp_config": {"layer_sizes": [8, 6]}, "affine_map": {"scale": 0.5, "bias": 0.3, "trainable": False}},
}
THREE_TASKS = ["data.tasks.reply={label: label.reply}"]
ARCHITECTURES = {
    "share_none": {},
    "share_all": {"multi_task_type": "share_all", "backbone": {"mlp_config": {"layer_sizes": [12]}}},
    "share_partial": {"multi_task_type": "share_partial", "backbone": {"mlp_config": {"layer_sizes": [12]}}},
    "mmoe": {"multi_task_type": "mmoe", "mixture": {"num_experts": 2},
             "backbone": {"mlp_config": {"layer_sizes": [12]}}},
    "ple": {"multi_task_type": "ple", "mixture": {"num_levels": 2, "num_task_experts": 1, "num_shared_experts": 1},
            "backbone": {"mlp_config": {"layer_sizes": [12]}}},
}


def _models(make_config, model: dict, overrides=()):
    config = make_config({**model, "tasks": copy.deepcopy(TOWERS), "group_towers": True},
                         overrides=[*THREE_TASKS, *overrides])
    torch.manual_seed(0)
    grouped = build_model(config)
    one_by_one = copy.deepcopy(grouped)
    one_by_one.dense.group_towers = False
    return config, grouped, one_by_one


def _run(model, batch, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch)
    (out["logits"] * torch.linspace(-1, 1, out["logits"].numel()).view_as(out["logits"])).sum().backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_grouped_towers_give_the_logits_and_gradients_of_the_heads_one_by_one(make_config, architecture):
    config, grouped, one_by_one = _models(make_config, ARCHITECTURES[architecture])
    assert grouped.dense.group_towers
    assert list(grouped.state_dict()) == list(one_by_one.state_dict())
    batch = random_batch(config, 16, torch.Generator().manual_seed(1))
    out_g, grads_g = _run(grouped, batch)
    out_o, grads_o = _run(one_by_one, batch)
    for key in ("logits", "calibrated_probabilities"):
        torch.testing.assert_close(out_g[key], out_o[key], rtol=1e-5, atol=1e-6, msg=key)
    assert grads_g.keys() == grads_o.keys()
    assert {f"dense.task_modules.{t}.tower.layers.2.weight" for t in TOWERS} <= grads_g.keys()
    assert "dense.task_modules.report.affine_map.scale" in grads_g
    for name, grad in grads_o.items():
        torch.testing.assert_close(grads_g[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_grouped_towers_under_bf16_autocast_and_with_dropout(make_config):
    config, grouped, one_by_one = _models(make_config, ARCHITECTURES["share_all"],
                                          [f"model.tasks.{t}.mlp_config.dropout=0.5" for t in TOWERS])
    batch = random_batch(config, 64, torch.Generator().manual_seed(2))
    out_g, _ = _run(grouped, batch, bf16=True)
    out_o, _ = _run(one_by_one, batch, bf16=True)
    # Dropout draws one mask for all heads: in training the outputs differ from the heads one by one.
    assert not torch.equal(out_g["logits"], out_o["logits"])
    grouped.eval()
    one_by_one.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(grouped(batch)["logits"], one_by_one(batch)["logits"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("change", [
    ["model.tasks.fav.mlp_config.layer_sizes=[8, 5]"],  # another width
    ["model.tasks.fav.mlp_config.batch_norm={}"],  # running statistics per head
    ["model.tasks.fav={dcn_config: {poly_degree: 1}}"],  # another architecture
    ["model.tasks.fav.mlp_config.dropout=0.1"],  # another dropout
])
def test_towers_that_differ_cannot_be_grouped(make_config, change):
    with pytest.raises(ValueError, match="model.group_towers: the task towers cannot be grouped"):
        _models(make_config, ARCHITECTURES["share_all"], change)


def _grouped_calls(model, batch, bf16: bool) -> int:
    """How many grouped computations of the towers one forward of `model` ran."""
    calls = []
    grouped_logits = dense_module.grouped_logits
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense_module, "grouped_logits", lambda *args: calls.append(1) or grouped_logits(*args))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(batch)
    return len(calls)


def test_by_default_towers_are_grouped_under_bf16_autocast_only_and_not_compiled(make_config):
    config = make_config({**ARCHITECTURES["share_all"], "tasks": copy.deepcopy(TOWERS)}, overrides=THREE_TASKS)
    assert config.model.group_towers == "auto"
    model = build_model(config)
    batch = random_batch(config, 8, torch.Generator().manual_seed(4))
    assert (_grouped_calls(model, batch, bf16=False), _grouped_calls(model, batch, bf16=True)) == (0, 1)
    x = torch.zeros(2, model.dense.input_width)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.dense.towers_grouped(x)
        # Inside a compiled region the towers run one by one (inductor fuses their small operations itself).
        assert not torch.compile(model.dense.towers_grouped, backend="eager", fullgraph=True)(x)
    model.dense.group_towers_in_bf16 = False  # model.group_towers: false
    assert _grouped_calls(model, batch, bf16=True) == 0


def test_auto_runs_towers_that_differ_one_by_one(make_config):
    config = make_config({**ARCHITECTURES["share_all"], "tasks": copy.deepcopy(TOWERS)},
                         overrides=[*THREE_TASKS, "model.tasks.fav.mlp_config.layer_sizes=[8, 5]"])
    model = build_model(config)
    assert not model.dense.group_towers_in_bf16
    assert _grouped_calls(model, random_batch(config, 8, torch.Generator().manual_seed(4)), bf16=True) == 0


def test_group_towers_takes_true_false_or_auto(make_config):
    with pytest.raises(ConfigError, match="group_towers"):
        make_config({**ARCHITECTURES["share_all"], "tasks": copy.deepcopy(TOWERS), "group_towers": "always"},
                    overrides=THREE_TASKS)


def test_the_dense_part_still_scripts_and_exports_with_grouped_towers(make_config):
    config, model, _ = _models(make_config, ARCHITECTURES["share_all"])
    model.eval()
    batch = random_batch(config, 8, torch.Generator().manual_seed(3))
    args = (batch.continuous, batch.binary, batch.discrete, batch.embeddings, model.embed_sparse(batch.sparse, 8))
    eager = model.dense(*args)["logits"]
    scripted = torch.jit.script(model.dense)  # TorchScript runs the heads one by one
    rows = torch.export.Dim("rows", min=2)
    exported = torch.export.export(model.dense, args, dynamic_shapes=tuple({0: rows} for _ in args)).module()
    for name, out in (("script", scripted(*args)), ("export", exported(*args))):
        torch.testing.assert_close(out["logits"], eager, rtol=1e-5, atol=1e-6, msg=name)
