"""DenseRankingModel (model/dense.py), built from configs: every sharing mode x tower type, and every history
encoder, runs forward and backward in fp32 and under bf16 autocast; towers read the input their sharing mode says; calibration and affine maps; export and scripting; bf16
autocast and eval mode; expert mixtures and their gate outputs; the ranking score; history encoders."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch

sys.path.insert(0, str(Path(__file__).parent))
from model_sections import ENCODERS, TOWERS, history_config, model_section  # noqa: E402


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tower", list(TOWERS))
@pytest.mark.parametrize("sharing", ["share_none", "share_all", "share_partial", "mmoe", "ple"])
def test_forward_backward_every_sharing_and_tower(make_config, sharing, tower, precision):
    torch.manual_seed(0)
    config = make_config(model_section(sharing, tower))
    model_and_loss = build_model_and_loss(config)
    batch = random_batch(config, 32, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, out = model_and_loss(batch)
    assert out["logits"].dtype == torch.float32
    for key in ("logits", "probabilities", "calibrated_probabilities", "labels", "weights"):
        assert out[key].shape == (32, 2), key
    assert out["task_losses"].shape == (2,) and out["stratifiers"].shape == (32, 2)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, param in model_and_loss.named_parameters():
        assert param.grad is not None, f"{name} is not in the graph"
        # A deep stack of tiny random experts can leave a LayerNorm fed constant rows (a zero gradient) on one
        # batch; tests/common/test_expert_mixtures.py checks every expert and gate learns.
        if sharing not in ("mmoe", "ple"):
            assert param.grad.abs().sum() > 0, f"{name} received no gradient"
    model = model_and_loss.model
    assert (model.dense.backbone is None) == (sharing in ("share_none", "mmoe", "ple"))
    assert (model.dense.mixture is None) == (sharing not in ("mmoe", "ple"))


def test_towers_read_the_input_the_sharing_mode_says(make_config):
    towers = {"fav": {"mlp_config": {"layer_sizes": [3]}}, "report": {"mlp_config": {"layer_sizes": [3]}}}
    backbone = {"mlp_config": {"layer_sizes": [7]}}
    none = build_model(make_config({"tasks": towers}))
    width = none.task_modules["fav"].tower.in_features
    # continuous 6 + binary 3, dense embeddings 7, small 3 + 2, position 2, pooled sparse 4 + 3
    assert width == 9 + 7 + 5 + 2 + 7
    share_all = build_model(
        make_config({"tasks": towers, "multi_task_type": "share_all", "backbone": backbone})
    )
    assert share_all.task_modules["fav"].tower.in_features == 7
    partial = build_model(
        make_config({"tasks": towers, "multi_task_type": "share_partial", "backbone": backbone})
    )
    assert partial.task_modules["report"].tower.in_features == width + 7


def test_mixed_tower_types_per_task(make_config):
    config = make_config(
        {
            "multi_task_type": "share_partial",
            "backbone": TOWERS["dcn"],
            "tasks": {
                "fav": TOWERS["mask_net_serial"],
                "report": TOWERS["mlp"],
                "reply": TOWERS["mask_net_parallel"],
            },
        }
    )
    model = build_model(config)
    assert list(model.task_modules) == ["fav", "report", "reply"]
    out = model(random_batch(config, 8))
    assert out["logits"].shape == (8, 3)


def test_calibration_and_affine_map_follow_the_config(make_config):
    config = make_config()
    model = build_model(config).eval()
    out = model(random_batch(config, 32, torch.Generator().manual_seed(2)))
    p = out["probabilities"]
    torch.testing.assert_close(p, torch.sigmoid(out["logits"]))
    # Tasks [fav, report]: r = 0.1 / 1.0 and 0.2 / 0.5, matched by name, not by the data tasks' order.
    r = torch.tensor([0.1, 0.4])
    torch.testing.assert_close(out["calibrated_probabilities"], p * r / (1 - p + r * p))
    head = model.task_modules["report"]
    assert head.affine_map.scale.item() == 2.0 and head.affine_map.bias.item() == -1.0
    x = torch.randn(3, head.tower.in_features)
    torch.testing.assert_close(head(x), 2.0 * head.final_logit(head.tower(x)["output"]) - 1.0)


def test_frozen_affine_map_is_not_a_parameter(make_config):
    config = make_config(overrides=["model.tasks.report.affine_map.trainable=false"])
    model = build_model(config)
    names = [n for n, _ in model.named_parameters()]
    assert not any("affine_map" in n for n in names)
    assert model.task_modules["report"].affine_map.scale.item() == 2.0


@pytest.mark.parametrize("tower", ["mlp", "dcn", "mask_net_parallel", "mask_net_serial_mlp"])
def test_dense_part_exports_and_scripts(make_config, tower):
    config = make_config(model_section("share_partial", tower))
    model = build_model(config).eval()
    batch = random_batch(config, 8, torch.Generator().manual_seed(3))
    args = (
        batch.continuous,
        batch.binary,
        batch.discrete,
        batch.embeddings,
        model.embed_sparse(batch.sparse, 8),
    )
    rows = torch.export.Dim("rows", min=2)
    exported = torch.export.export(model.dense, args, dynamic_shapes=tuple({0: rows} for _ in args))
    scripted = torch.jit.script(model.dense)
    other = random_batch(config, 5, torch.Generator().manual_seed(4))
    args = (
        other.continuous,
        other.binary,
        other.discrete,
        other.embeddings,
        model.embed_sparse(other.sparse, 5),
    )
    eager = model.dense(*args)
    for name, out in (("export", exported.module()(*args)), ("script", scripted(*args))):
        for key in ("logits", "probabilities", "calibrated_probabilities"):
            torch.testing.assert_close(out[key], eager[key], msg=f"{name} {key}")


def test_bf16_autocast_and_eval_mode(make_config):
    config = make_config(model_section("share_all", "mask_net_parallel"))
    model_and_loss = build_model_and_loss(config)
    batch = random_batch(config, 16, torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, out = model_and_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and out["logits"].dtype == torch.float32
    assert torch.isfinite(out["calibrated_probabilities"]).all()
    model_and_loss.eval()
    with torch.no_grad():
        first = model_and_loss(batch)[1]["logits"]
        second = model_and_loss(batch)[1]["logits"]
    # No dropout, BatchNorm on running statistics, position always "unknown": eval is deterministic.
    torch.testing.assert_close(first, second)
    shuffled = batch.discrete.clone()
    shuffled[:, 1] = torch.randint(0, 10, (16,))
    with torch.no_grad():
        moved = model_and_loss(type(batch)(**{**batch.__dict__, "discrete": shuffled}))[1]["logits"]
    torch.testing.assert_close(moved, first)


@pytest.mark.parametrize("sharing", ["mmoe", "ple"])
def test_each_task_tower_reads_its_own_mixture(make_config, sharing):
    torch.manual_seed(0)
    config = make_config(model_section(sharing, "mlp"))
    dense = build_model_and_loss(config).model.dense
    x = torch.randn(5, dense.input_width)
    task_inputs, gates = dense.mixture(x)
    for weights in gates.values():
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))
    # The towers of fav and report read different mixtures of the same experts, of the towers' input width.
    assert not torch.allclose(task_inputs[0], task_inputs[1])
    for head, h in zip(dense.task_modules.values(), task_inputs):
        assert head(h).shape == (5, 1)


@pytest.mark.parametrize("section, message", [
    ({"multi_task_type": "mmoe"}, "multi_task_type mmoe needs model.mixture"),
    ({"multi_task_type": "mmoe", "mixture": {"num_levels": 2}}, "mmoe takes model.mixture.num_experts only"),
    ({"multi_task_type": "ple", "mixture": {"num_experts": 2}}, "ple takes model.mixture.num_levels"),
    ({"multi_task_type": "ple", "mixture": {"num_levels": 2, "num_task_experts": 1, "num_shared_experts": 0}},
     "ple with several levels needs shared experts"),
    ({"multi_task_type": "share_all", "mixture": {"num_experts": 2}}, "model.mixture applies to multi_task_type"),
])
def test_mixture_settings_are_checked(make_config, section, message):
    from core.config import ConfigError

    full = {"tasks": {"fav": TOWERS["mlp"], "report": TOWERS["mlp"]}, "backbone": TOWERS["mlp"], **section}
    with pytest.raises(ConfigError, match=message):
        make_config(full)


@pytest.mark.parametrize("sharing", ["share_all", "mmoe", "ple"])
def test_ranking_score_is_the_weighted_sum_of_calibrated_probabilities(make_config, sharing):
    torch.manual_seed(0)
    section = model_section(sharing, "mlp")
    section["scoring"] = {"weights": {"fav": 0.5, "report": -234.0}}
    config = make_config(section)
    model_and_loss = build_model_and_loss(config)
    batch = random_batch(config, 16, torch.Generator().manual_seed(2))
    _, out = model_and_loss(batch)
    p = out["calibrated_probabilities"]
    torch.testing.assert_close(out["score"], 0.5 * p[:, 0] - 234.0 * p[:, 1])
    assert out["score"].shape == (16,)
    # The score weights come from the config, like the calibration: not saved with the weights.
    assert "model.dense.score_weight" not in model_and_loss.state_dict()


def test_unscored_model_has_no_score_and_a_task_left_out_weighs_zero(make_config):
    config = make_config()
    assert "score" not in build_model(config)(random_batch(config, 4))
    config = make_config({"scoring": {"weights": {"report": 2.0}}})
    model = build_model(config)
    assert model.dense.score_weight.tolist() == [0.0, 2.0]
    out = model(random_batch(config, 4))
    torch.testing.assert_close(out["score"], 2.0 * out["calibrated_probabilities"][:, 1])


@pytest.mark.parametrize("scoring, message", [
    ({"weights": {"fav": 1.0, "favorite": 0.5}}, r"names \['favorite'\], which are not model.tasks"),
    ({"weights": {}}, "at least 1"),
    ({"weights": {"fav": float("nan")}}, "finite"),
])
def test_scoring_weights_are_checked(make_config, scoring, message):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_config({"scoring": scoring})


@pytest.mark.parametrize("sharing, gates", [
    ("mmoe", {"gates/fav": 3, "gates/report": 3}),
    ("ple", {"gates/level_0/fav": 3, "gates/level_0/report": 3, "gates/level_0/shared": 4,
             "gates/level_1/fav": 3, "gates/level_1/report": 3}),
])
def test_mixture_gate_weights_are_outputs_named_by_task(make_config, sharing, gates):
    torch.manual_seed(0)
    config = make_config(model_section(sharing, "mlp"))
    model_and_loss = build_model_and_loss(config)
    assert model_and_loss.model.output_names == list(gates)
    _, out = model_and_loss(random_batch(config, 8))
    for key, experts in gates.items():
        assert out[key].shape == (8, experts), key
        torch.testing.assert_close(out[key].sum(dim=1), torch.ones(8))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sharing", ["share_all", "mmoe"])
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_history_encoders_join_the_model_input_and_learn(make_config, encoder, sharing, precision):
    torch.manual_seed(0)
    config = history_config(make_config, ENCODERS[encoder], sharing)
    model_and_loss = build_model_and_loss(config)
    dense = model_and_loss.model.dense
    # Tokens: 8 values per id column (2), the action and the continuous block; output [encoded, candidate] and the
    # match features of the one id column with a candidate (2 + 4 actions).
    assert list(dense.histories) == ["history"] and dense.histories["history"].output_dim == 70
    batch = random_batch(config, 12, torch.Generator().manual_seed(3))
    assert batch.sequences["history"]["lengths"].max() <= 6
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, out = model_and_loss(batch)
    assert out["logits"].shape == (12, 2)
    loss.backward()
    history = dense.histories["history"]
    for name, param in history.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # The history moves the scores: other histories, other predictions.
    other = random_batch(config, 12, torch.Generator().manual_seed(4))
    changed = dataclasses.replace(batch, sequences=other.sequences)
    model_and_loss.eval()
    with torch.no_grad():
        assert not torch.allclose(model_and_loss(batch)[1]["logits"], model_and_loss(changed)[1]["logits"])
