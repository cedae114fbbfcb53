"""The history group's optional settings through the config: the model builds, trains every new parameter, and
the schema names the settings that do not fit the group."""

import pytest
import torch

from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch

MLP = {"mlp_config": {"layer_sizes": [8]}}


def _config(make_config, encoder: dict, **options):
    section = {"multi_task_type": "share_none", "tasks": {"fav": dict(MLP), "report": dict(MLP)}}
    section["sequences"] = {"history": {
        "embedding_dim": 8, "num_actions": 4, "encoder": encoder, **options,
        "tables": {"hist_author": {"num_embeddings": 50}, "hist_tag": {"num_embeddings": 30, "id_transform": "mod"}},
    }}
    group = {"max_length": 6, "ids": [{"name": "hist_author", "candidate": "user_id"}, "hist_tag"],
             "actions": "hist_action", "continuous": ["hist_age"]}
    return make_config(section, overrides=[f"data.features.sequences={{history: {group}}}"])


OPTIONS = {
    "target_attention": ({"target_attention": {"hidden_dims": [8]}},
                         dict(action_weights=True, time_decay={"column": "hist_age", "init_hours": 12},
                              candidate_features=True, mean_pooling=True, ordinal_actions=True)),
    "transformer": ({"transformer": {"num_layers": 1, "num_heads": 2}},
                    dict(candidate_features=True, mean_pooling=True, user_token=True)),
}


@pytest.mark.parametrize("encoder", list(OPTIONS))
def test_every_option_builds_and_learns(make_config, encoder):
    torch.manual_seed(0)
    config = _config(make_config, OPTIONS[encoder][0], **OPTIONS[encoder][1])
    model_and_loss = build_model_and_loss(config)
    history = model_and_loss.model.dense.histories["history"]
    featurized = model_and_loss.model.dense.featurizer.output_dim
    assert history.tokens.candidate_projection.in_features == featurized
    if encoder == "target_attention":
        # [encoded, mean, candidate] 3 x 32; the history's mean action; the matched column 2 + 4 + 1 + 1.
        assert history.output_dim == 3 * 32 + 1 + 8
        assert history.item_weights.decay is not None and history.item_weights.action_scale.shape == (4,)
    else:
        assert history.output_dim == 3 * 32 + 6 and history.user is not None
    batch = random_batch(config, 12, torch.Generator().manual_seed(3))
    loss, out = model_and_loss(batch)
    loss.backward()
    for name, param in history.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # The candidate token reads the row's own continuous features: other features, other history outputs.
    model_and_loss.eval()
    with torch.no_grad():
        torch.nn.init.normal_(history.tokens.candidate_projection.weight)
        before = model_and_loss(batch)[1]["logits"]
        batch.continuous[0] += 1.0
        after = model_and_loss(batch)[1]["logits"]
    assert not torch.allclose(before[0], after[0])


@pytest.mark.parametrize("change, message", [
    ({"model.sequences.history.time_decay": "{column: nope}"}, "time_decay.column 'nope' is not one of the group's"),
    ({"model.sequences.history.user_token": "true"}, "user_token needs the transformer encoder"),
    ({"model.sequences.history.action_weights": "true", "model.sequences.history.encoder":
      "{transformer: {num_heads: 2}}"}, "action_weights and time_decay weigh items in pooling and target attention"),
    ({"model.sequences.history.ordinal_actions": "true", "model.sequences.history.num_actions": "null",
      "data.features.sequences.history.actions": "null"}, "ordinal_actions needs the group's actions column"),
    ({"model.sequences.history.time_decay": "{column: hist_age, init_hours: 0}"}, "greater than 0"),
])
def test_history_options_are_checked(make_config, change, message):
    from core.config import ConfigError, load_config
    from projects.home.recap.schema import RecapConfig

    data = _config(make_config, {"pooling": {"mode": "mean"}}).model_dump(mode="json")
    with pytest.raises(ConfigError, match=message):
        load_config(None, RecapConfig, [f"{k}={v}" for k, v in change.items()], data=data)
