"""training.compile: the dense model (and the loss) compiled in place with the sparse lookup left eager. Whole graphs
(no breaks) for every architecture, one recompile on a new batch size and none after, eager's results in fp32 and
bf16, and state_dicts that do not change when compiled."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from core.compile import graph_breaks, graphs_built
from core.train_config import CompileConfig
from projects.home.recap.model.compiled import compile_model
from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.loss import multi_task_bce
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import load_recap_config

CONFIG_DIR = Path(__file__).resolve().parents[5] / "projects" / "home" / "recap" / "config"
# The shipped architectures: the demo (MaskNet backbone, ten towers), recap scale, an expert mixture of each kind,
# and a history encoder.
ARCHITECTURES = {
    "demo": ("demo", []),
    "recap_scale": ("recap_scale", []),
    "mmoe": ("demo", ["model.multi_task_type=mmoe", "model.mixture={num_experts: 3}"]),
    "ple": ("demo", ["model.multi_task_type=ple",
                     "model.mixture={num_levels: 2, num_task_experts: 1, num_shared_experts: 2}"]),
    "history": ("demo_history", []),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from empty torch.compile caches and counters; compiled random ops draw as eager's do."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with inductor_config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def dense_inputs(model, batch) -> tuple[tuple, dict]:
    """The arguments MultiTaskRankingModel hands its DenseRankingModel for `batch` (after the eager lookup), as a
    compiled dense model gets them: history rows padded, not packed."""
    captured = {}
    model.pack_history_rows = False

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs

    handle = model.dense.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_dense_model_of_every_architecture_is_one_graph(name, precision):
    file, overrides = ARCHITECTURES[name]
    config = load_recap_config(CONFIG_DIR / f"{file}.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(config).train()
    args, kwargs = dense_inputs(model, random_batch(config, 16, torch.Generator().manual_seed(0)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        explained = torch._dynamo.explain(model.dense)(*args, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    assert explained.op_count > 10


def test_the_loss_is_one_graph():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 3, generator=g), (torch.rand(8, 3, generator=g) < 0.3).float()
    explained = torch._dynamo.explain(multi_task_bce)(logits, labels, torch.ones(8, 3), torch.ones(3), torch.ones(3))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _pair(make_config, target: str = "dense+loss", backend: str = "inductor", cpp_wrapper: bool = False):
    """(eager, compiled) ModelAndLoss with the same weights; the tiny model of the model tests with dropout."""
    config = make_config(overrides=["model.tasks.fav.mlp_config.dropout=0.2"])
    torch.manual_seed(0)
    eager = build_model_and_loss(config)
    compiled = compile_model(copy.deepcopy(eager), CompileConfig(target=target, backend=backend,
                                                                 cpp_wrapper=cpp_wrapper))
    return config, eager, compiled


def _step(model, batch, seed: int, bf16: bool = False):
    """Loss, outputs and gradients of one training forward/backward under a fixed random seed."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, outputs = model(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), outputs, grads


@pytest.mark.slow
@pytest.mark.parametrize("precision,tolerance,cpp_wrapper", [("fp32", 1e-5, False), ("bf16", 3e-2, False),
                                                             ("fp32", 1e-5, True)])
def test_compiled_training_and_evaluation_match_eager(make_config, precision, tolerance, cpp_wrapper):
    config, eager, compiled = _pair(make_config, cpp_wrapper=cpp_wrapper)
    batch = random_batch(config, 32, torch.Generator().manual_seed(1))
    bf16 = precision == "bf16"
    loss_e, out_e, grads_e = _step(eager, batch, seed=5, bf16=bf16)
    loss_c, out_c, grads_c = _step(compiled, batch, seed=5, bf16=bf16)
    assert graphs_built() == 2 and graph_breaks() == 0  # the dense model and the loss, each one graph
    close = {"rtol": tolerance, "atol": tolerance}
    torch.testing.assert_close(loss_c, loss_e, **close)
    for key in ("logits", "calibrated_probabilities", "task_losses"):
        torch.testing.assert_close(out_c[key], out_e[key], **close, msg=key)
    assert grads_c.keys() == grads_e.keys() and any("task_modules.fav" in k for k in grads_e)
    for name, grad in grads_e.items():
        # Gradients relative to their own scale: bf16 rounds each product to 8 bits of mantissa.
        scale = grad.abs().max().clamp_min(1e-3)
        torch.testing.assert_close(grads_c[name] / scale, grad / scale, **close, msg=name)
    eager.eval()
    compiled.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, eval_e = eager(batch)
        _, eval_c = compiled(batch)
    torch.testing.assert_close(eval_c["probabilities"], eval_e["probabilities"], **close)


@pytest.mark.slow
def test_only_a_new_batch_size_recompiles_and_only_once(make_config):
    # Recompiling is torch.compile's front end's decision, the same for every backend: aot_eager skips the code
    # generation.
    config, _, compiled = _pair(make_config, target="dense", backend="aot_eager")
    g = torch.Generator().manual_seed(2)
    built = []
    for size in (16, 16, 16, 7, 11, 16, 5):
        _step(compiled, random_batch(config, size, g), seed=size)
        built.append(graphs_built())
    # The first batch compiles; the first other size (a last, partial batch) recompiles with the batch dimension
    # dynamic; every later size reuses that graph.
    assert built == [1, 1, 1, 2, 2, 2, 2]
    assert graph_breaks() == 0


def test_compiling_keeps_the_state_dict_and_checkpoints_load_both_ways(make_config):
    config, eager, compiled = _pair(make_config)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    # Weights saved by one load strictly into the other, in both directions.
    torch.manual_seed(3)
    other = build_model_and_loss(config)
    compiled.load_state_dict(other.state_dict(), strict=True)
    eager.load_state_dict(compiled.state_dict(), strict=True)
    for (name, a), b in zip(other.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_off_compiles_nothing_and_a_model_without_a_dense_part_is_refused(make_config):
    config, eager, _ = _pair(make_config)
    assert compile_model(eager, CompileConfig()) is eager and eager.model.dense._compiled_call_impl is None
    with pytest.raises(ValueError, match="holds no DenseRankingModel"):
        compile_model(torch.nn.Linear(2, 2), CompileConfig(target="dense"))
    with pytest.raises(ValueError, match="not a ModelAndLoss"):
        compile_model(eager.model, CompileConfig(target="dense+loss"))


def test_a_mode_or_backend_without_a_target_is_a_config_error():
    with pytest.raises(ValueError, match="applies only when target is dense"):
        CompileConfig(mode="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="backend aot_eager applies only when target is dense"):
        CompileConfig(backend="aot_eager")
    with pytest.raises(ValueError, match="is an inductor mode"):
        CompileConfig(target="dense", backend="aot_eager", mode="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="backend"):
        CompileConfig(target="dense", backend="eager_typo")
    assert CompileConfig(target="dense", mode="reduce-overhead").mode == "reduce-overhead"
    with pytest.raises(ValueError, match="cpp_wrapper applies only to backend inductor"):
        CompileConfig(cpp_wrapper=True)
    with pytest.raises(ValueError, match="cpp_wrapper applies only to backend inductor"):
        CompileConfig(target="dense", backend="aot_eager", cpp_wrapper=True)


def test_cpp_wrapper_keeps_the_modes_own_inductor_options():
    from core.compile import compile_options

    assert compile_options("default", cpp_wrapper=True) == {"options": {"cpp_wrapper": True}}
    options = compile_options("max-autotune-no-cudagraphs", cpp_wrapper=True)["options"]
    assert options["cpp_wrapper"] and options["max_autotune"]
    assert compile_options("max-autotune-no-cudagraphs") == {"mode": "max-autotune-no-cudagraphs"}


def test_aot_eager_backend_traces_and_matches_eager(make_config):
    config, eager, compiled = _pair(make_config, backend="aot_eager")
    batch = random_batch(config, 16, torch.Generator().manual_seed(1))
    loss_e, _, grads_e = _step(eager, batch, seed=5)
    loss_c, _, grads_c = _step(compiled, batch, seed=5)
    assert graphs_built() == 2 and graph_breaks() == 0
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-6)
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_yaml_off_is_off():
    from core.config import load_config
    from core.train_config import TrainingConfig

    loaded = load_config(None, TrainingConfig, ["compile.target=off"], data={"save_dir": "x", "num_train_steps": 1})
    assert loaded.compile.target == "off"
    assert load_config(None, TrainingConfig, ["compile.target=dense+loss"],
                       data={"save_dir": "x", "num_train_steps": 1}).compile.target == "dense+loss"


def test_uncompiling_restores_the_eager_model(make_config):
    from projects.home.recap.model.compiled import uncompile_model

    model = build_model_and_loss(make_config())
    compile_model(model, CompileConfig(target="dense+loss"))
    assert model.model.dense._compiled_call_impl is not None and model.loss_function is not multi_task_bce
    uncompile_model(model)
    assert model.model.dense._compiled_call_impl is None and model.loss_function is multi_task_bce


def test_a_compiled_history_model_trains_on_the_padded_rows():
    """Training on the CPU, an eager history model hands its packing encoder the sharded rows packed; compiled, the
    dense model gets them padded (it does not pack) and computes what eager computes."""
    # No random ops (the position feature's dropout): the two runs draw differently.
    config = load_recap_config(CONFIG_DIR / "demo_history.yaml", ["model.position_debias.drop_probability=0"])
    torch.manual_seed(0)
    eager = build_model(config).train()
    compiled = compile_model(copy.deepcopy(eager), CompileConfig(target="dense", backend="aot_eager"))
    batch = random_batch(config, 16, torch.Generator().manual_seed(1))
    outputs = []
    for model in (eager, compiled):
        out = model(batch)
        out["logits"].sum().backward()
        outputs.append((out["logits"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (logits, grads), (logits_compiled, grads_compiled) = outputs
    torch.testing.assert_close(logits_compiled, logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_compiled.keys()
    for name in grads:
        torch.testing.assert_close(grads_compiled[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)
