"""A small recap config (every feature kind, three tasks with their own sampling rates) for the model tests."""

import copy

import pytest

from core.config import load_config
from projects.home.recap.schema import RecapConfig

BASE = {
    "data": {
        "features": {
            "continuous": [{"name": "counts", "length": 5}, "ratio"],
            "binary": [{"name": "flags", "length": 3}],
            "discrete": ["country", "position", "hour"],
            "sparse": ["user_id", "unused_ids", "hashtags"],
            "embeddings": [{"name": "user_embedding", "dim": 4}, {"name": "tweet_embedding", "dim": 3}],
        },
        "tasks": {
            "reply": {"label": "label.reply"},
            "fav": {"label": "label.fav", "neg_rate": 0.1},
            "report": {"label": "label.report", "pos_rate": 0.5, "neg_rate": 0.2},
        },
        # These fixtures exercise the calibration path (the rates are undone by the model's calibration).
        "downsampling_correction": "calibration",
    },
    "model": {
        "small_embeddings": [
            {"feature": "country", "num_embeddings": 5, "embedding_dim": 3},
            {"feature": "hour", "num_embeddings": 24, "embedding_dim": 2},
        ],
        "large_embeddings": [
            {"name": "users", "feature_names": ["user_id"], "num_embeddings": 97, "embedding_dim": 4},
            {
                "name": "tags",
                "feature_names": ["hashtags"],
                "num_embeddings": 13,
                "embedding_dim": 3,
                "pooling": "sum",
                "id_transform": "mod",
            },
        ],
        "position_debias": {"feature": "position", "num_positions": 10, "embedding_dim": 2},
        "tasks": {
            "fav": {"mlp_config": {"layer_sizes": [8, 4]}},
            "report": {"mlp_config": {"layer_sizes": [4]}, "affine_map": {"scale": 2.0, "bias": -1.0}},
        },
    },
    "training": {"save_dir": "unused", "num_train_steps": 1},
    "optimizer": {"dense": {"adam": {}, "learning_rate": {"constant": 0.001}}},
    "evaluation": {"stratifiers": ["hour", "country"]},
}


def build_config(model: dict | None = None, overrides: list[str] = ()) -> RecapConfig:
    """BASE with model keys replaced by `model` and `--set`-style overrides applied."""
    data = copy.deepcopy(BASE)
    data["model"].update(copy.deepcopy(model or {}))
    return load_config(None, RecapConfig, overrides, data=data)


@pytest.fixture
def make_config():
    return build_config
