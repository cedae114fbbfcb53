"""Small embeddings over fixed-length discrete list columns (each slot looked up in the column's table, slots
concatenated), and the warning for discrete columns nothing uses."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from common.embeddings import SmallEmbeddings
from core.config import ConfigError
from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.serving.export import export_serving_artifact
from projects.home.recap.serving.serving_model import serving_inputs

# The serving tests' config (every input kind, a trained model) is the one export is checked against.
_spec = importlib.util.spec_from_file_location("serving_setup", Path(__file__).parents[1] / "serving" / "conftest.py")
serving_setup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving_setup)

RECENT = "{name: recent_hours, length: 3}"
RECENT_TABLE = "{feature: recent_hours, num_embeddings: 24, embedding_dim: 2}"


def test_list_column_slots_are_table_rows_side_by_side():
    # Column 0 scalar (table 0, size 5, dim 2); columns 1-3 a list of 3 (table 1, size 4, dim 3).
    emb = SmallEmbeddings(columns=[1, 0], num_embeddings=[4, 5], embedding_dims=[3, 2], lengths=[3, 1])
    assert emb.output_dim == 3 * 3 + 2
    discrete = torch.tensor([[7, 0, 1, 2], [-1, 3, 5, -6]])
    out = emb(discrete)
    listed, scalar = emb.tables
    assert out.shape == (2, 11)
    # Row 0 slots 0, 1, 2 -> rows 0, 1, 2; row 1 slots 3, 5, -6 -> rows 3, 1, 2 (mod 4). Scalar: 7 -> 2, -1 -> 4.
    expected = torch.stack([
        torch.cat([listed.weight[0], listed.weight[1], listed.weight[2], scalar.weight[2]]),
        torch.cat([listed.weight[3], listed.weight[1], listed.weight[2], scalar.weight[4]]),
    ])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.jit.script(emb)(discrete), expected)


def test_one_slot_list_equals_the_scalar_lookup():
    torch.manual_seed(0)
    as_list = SmallEmbeddings(columns=[0], num_embeddings=[6], embedding_dims=[2], lengths=[1])
    scalar = SmallEmbeddings(columns=[0], num_embeddings=[6], embedding_dims=[2])
    scalar.load_state_dict(as_list.state_dict())
    discrete = torch.tensor([[4], [9], [-2]])
    torch.testing.assert_close(as_list(discrete), scalar(discrete))


def _with_recent_hours(make_config, extra: list[str] = ()):
    return make_config(overrides=[
        f"data.features.discrete=[country, {RECENT}, position, hour]",
        "model.small_embeddings=[{feature: country, num_embeddings: 5, embedding_dim: 3}, "
        f"{RECENT_TABLE}, {{feature: hour, num_embeddings: 24, embedding_dim: 2}}]",
        *extra,
    ])


def test_model_reads_the_list_column_and_trains_a_step(make_config):
    config = _with_recent_hours(make_config)
    without = make_config(overrides=[f"data.features.discrete=[country, {RECENT}, position, hour]"])
    assert config.data.features.num_discrete == 6
    model_and_loss = build_model_and_loss(config)
    small = model_and_loss.model.dense.small_embeddings
    assert small.output_dim == 3 + 3 * 2 + 2
    # The input grows by 3 slots x 2: every tower's first layer is wider by 6 than without the list table.
    first = model_and_loss.model.task_modules["fav"].tower.layers[0]
    assert first.in_features == build_model(without).task_modules["fav"].tower.layers[0].in_features + 6

    batch = random_batch(config, 8, torch.Generator().manual_seed(0))
    # discrete = [country, recent_hours x3, position, hour]: the list's slots are columns 1-3.
    got = small(batch.discrete)[:, 3:9]
    expected = torch.cat([small.tables[1].weight[batch.discrete[:, k] % 24] for k in (1, 2, 3)], dim=1)
    torch.testing.assert_close(got, expected)

    optimizer = torch.optim.SGD(model_and_loss.parameters(), lr=0.1)
    before = small.tables[1].weight.detach().clone()
    loss, _ = model_and_loss(batch)
    loss.backward()
    used = torch.unique(batch.discrete[:, 1:4] % 24)
    grad = small.tables[1].weight.grad
    assert grad[used].abs().sum() > 0
    assert torch.count_nonzero(grad.abs().sum(1)) == len(used)  # only looked-up rows get gradient
    optimizer.step()
    assert not torch.equal(small.tables[1].weight, before) and torch.isfinite(loss)


def test_export_reproduces_the_model_with_a_list_column(tmp_path):
    config = serving_setup.build_config([
        f"data.features.discrete=[country, position, hour, {RECENT}]",
        f"model.small_embeddings=[{{feature: country, num_embeddings: 5, embedding_dim: 3}}, {RECENT_TABLE}]",
    ])
    model = serving_setup.trained_model(config, steps=3)
    artifact = export_serving_artifact(model, config, tmp_path / "artifact")
    program = torch.export.load(artifact / "model.pt2").module()
    features = ["user_id", "author_id", "hashtags"]
    g = torch.Generator().manual_seed(5)
    for b in (1, 7):
        batch = random_batch(config, b, g)
        with torch.no_grad():
            expected = model(batch)
        got = program(*serving_inputs(batch, features))
        for key in ("logits", "probabilities", "calibrated_probabilities"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=f"batch {b}: {key}")
    metadata = json.loads((artifact / "metadata.json").read_text())
    discrete = next(spec for spec in metadata["inputs"] if spec["name"] == "discrete")
    assert discrete["shape"] == ["batch", 6]
    assert discrete["columns"][-1] == {"name": "recent_hours", "length": 3}


def test_list_column_still_cannot_be_a_stratifier_or_position(make_config):
    with pytest.raises(ConfigError, match="evaluation.stratifiers: 'recent_hours' is not a scalar discrete column"):
        _with_recent_hours(make_config, ["evaluation.stratifiers=[recent_hours]"])
    with pytest.raises(ConfigError, match="model.position_debias.feature 'recent_hours' is not a scalar discrete"):
        _with_recent_hours(make_config, ["model.position_debias.feature=recent_hours"])
    with pytest.raises(ConfigError, match=r"model.small_embeddings\[0\].feature 'user_id' is not a discrete column"):
        make_config({"small_embeddings": [{"feature": "user_id", "num_embeddings": 5, "embedding_dim": 2}]})


def _warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unused" in r.getMessage()]


def test_unused_discrete_columns_are_a_warning_naming_them(make_config, caplog):
    with caplog.at_level(logging.WARNING):
        config = make_config(overrides=[f"data.features.discrete=[country, {RECENT}, position, hour, weekday]"])
    warned = _warned(caplog)
    assert len(warned) == 2
    assert "data.features.discrete[1] 'recent_hours' is read but unused" in warned[0]
    assert "data.features.discrete[4] 'weekday' is read but unused" in warned[1]
    assert config.data.features.num_discrete == 7  # still read: a warning, not an error


@pytest.mark.parametrize(
    "overrides",
    [
        # country and hour have small embeddings, position is the position debias feature in every case.
        ["evaluation.stratifiers=[weekday]"],
        ["evaluation.group_auc_column=weekday"],
        ["model.small_embeddings=[{feature: country, num_embeddings: 5, embedding_dim: 3}, "
         "{feature: hour, num_embeddings: 24, embedding_dim: 2}, {feature: weekday, num_embeddings: 7, "
         "embedding_dim: 2}]"],
    ],
    ids=["stratifier", "group_auc_column", "small_embedding"],
)
def test_a_used_discrete_column_is_not_warned_about(make_config, caplog, overrides):
    with caplog.at_level(logging.WARNING):
        make_config(overrides=["data.features.discrete=[country, position, hour, weekday]", *overrides])
    assert _warned(caplog) == []
