"""model.numeric_embeddings: boundaries read from the statistics file, the model's input width, a training step,
and the config errors a user meets (naming the key, the file and the feature)."""

import json

import pytest
import torch

from common.numeric_embeddings import NumericEmbeddings
from core.config import ConfigError
from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch

# The model tests' schema: continuous counts (5 slots) then ratio.
BOUNDARIES = [[0.0, 1.0, 2.0, 4.0, 8.0], [0.0, 1.0], [-1.0, 0.0, 1.0], [0.0, 3.0], [0.0, 1.0, 5.0], [0.0, 0.5, 1.0]]


def _stats(path, boundaries=BOUNDARIES, **extra) -> str:
    stats = {"columns": ["counts", "ratio"], "widths": [5, 1], "mean": [0.0] * 6, "std": [1.0] * 6,
             "boundaries": boundaries, **extra}
    path.write_text(json.dumps(stats))
    return str(path)


def test_all_continuous_values_embedded_next_to_the_featurized_ones(make_config, tmp_path):
    config = make_config({"numeric_embeddings": {"stats_path": _stats(tmp_path / "s.json"), "embedding_dim": 3,
                                                 "max_bins": 2}})
    plain = build_model(make_config())
    model = build_model(config)
    numeric = model.dense.numeric_embeddings
    assert isinstance(numeric, NumericEmbeddings) and numeric.output_dim == 6 * 3
    assert numeric.column_index.tolist() == [0, 1, 2, 3, 4, 5]
    # max_bins 2 thins [0, 1, 2, 4, 8] to [0, 2, 8]: bins [0, 2], [2, 8].
    torch.testing.assert_close(numeric.encoding.lower[0], torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(numeric.encoding.inv_width[0], torch.tensor([0.5, 1 / 6]))
    # Every tower's first layer reads 18 more inputs.
    first = {n: p.shape[1] for n, p in model.named_parameters() if n.endswith("0.weight") and "task_modules" in n}
    before = {n: p.shape[1] for n, p in plain.named_parameters() if n.endswith("0.weight") and "task_modules" in n}
    assert first and all(first[n] == before[n] + 18 for n in first)


def test_chosen_features_and_a_training_step(make_config, tmp_path):
    config = make_config({"numeric_embeddings": {"stats_path": _stats(tmp_path / "s.json"), "features": ["ratio"]}})
    torch.manual_seed(0)
    model_and_loss = build_model_and_loss(config)
    numeric = model_and_loss.model.dense.numeric_embeddings
    assert numeric.column_index.tolist() == [5] and numeric.output_dim == 8
    before = numeric.weight.detach().clone()
    optimizer = torch.optim.Adam(model_and_loss.parameters(), lr=0.01)
    batch = random_batch(config, 16, torch.Generator().manual_seed(0))
    batch.continuous[:, 5] = torch.linspace(-0.5, 1.5, 16)  # through both bins and beyond
    loss, out = model_and_loss(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and out["logits"].shape == (16, 2)
    assert not torch.equal(numeric.weight.detach(), before)


def test_columns_named_once_per_value_are_accepted_as_for_zscore_log(make_config, tmp_path):
    per_value = [f"counts[{i}]" for i in range(5)] + ["ratio"]
    config = make_config({"numeric_embeddings": {"stats_path": _stats(tmp_path / "s.json", columns=per_value)}})
    assert build_model(config).dense.numeric_embeddings.output_dim == 6 * 8


def test_unknown_or_non_continuous_feature_is_a_config_error(make_config, tmp_path):
    for name in ("hour", "nope"):
        with pytest.raises(ConfigError, match=f"model.numeric_embeddings.features: '{name}' is not a continuous"):
            make_config({"numeric_embeddings": {"stats_path": "s.json", "features": [name]}})
    with pytest.raises(ConfigError, match="features must be unique"):
        make_config({"numeric_embeddings": {"stats_path": "s.json", "features": ["ratio", "ratio"]}})


@pytest.mark.parametrize(
    "write, features, message",
    [
        (None, None, "not found; write it with `recap data stats"),
        (lambda p: p.write_text("{not json"), None, "is not valid JSON"),
        (lambda p: p.write_text(json.dumps({"mean": [0.0] * 6, "std": [1.0] * 6})), None, "holds no 'boundaries'"),
        (lambda p: _stats(p, BOUNDARIES[:5]), None, "boundaries has 5 entries but the feature schema has 6"),
        (lambda p: _stats(p, columns=["ratio", "counts"]), None, "do not match the schema's continuous columns"),
        (lambda p: _stats(p, BOUNDARIES[:5] + [[0.0]]), ["ratio"], "feature 'ratio' has 1 distinct finite value"),
        (lambda p: _stats(p, [[0.0, 1.0], [2.0, 1.0]] + BOUNDARIES[2:]), ["counts"],
         "feature 'counts' slot 1: boundaries must be finite and strictly increasing"),
    ],
)
def test_stats_file_errors_name_the_file_and_feature(make_config, tmp_path, write, features, message):
    path = tmp_path / "stats.json"
    if write is not None:
        write(path)
    config = make_config({"numeric_embeddings": {"stats_path": str(path), "features": features}})
    with pytest.raises(ConfigError, match="model.numeric_embeddings.stats_path") as info:
        build_model(config)
    assert str(path) in str(info.value) and message in str(info.value)
