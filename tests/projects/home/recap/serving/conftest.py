"""A small recap config with every input kind and a model trained a few steps, exported once per test session."""

import pytest
import torch

from core.config import load_config
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.export import export_serving_artifact

CONFIG = {
    "data": {
        "features": {
            "continuous": [{"name": "counts", "length": 5}, "ratio"],
            "binary": [{"name": "flags", "length": 3}],
            "discrete": ["country", "position", "hour"],
            # unused_ids is read by no table: it is not a serving input.
            "sparse": ["user_id", "unused_ids", "hashtags", "author_id"],
            "embeddings": [{"name": "user_embedding", "dim": 4}, {"name": "tweet_embedding", "dim": 3}],
            "ids": ["impression_id"],
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
            # Two features share one hashed, mean-pooled table; the other is modded and sum-pooled.
            {"name": "people", "feature_names": ["user_id", "author_id"], "num_embeddings": 97, "embedding_dim": 4},
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
        "multi_task_type": "share_partial",
        "backbone": {"mlp_config": {"layer_sizes": [16, 8], "batch_norm": {}, "dropout": 0.2}},
        "tasks": {
            "fav": {"mlp_config": {"layer_sizes": [8, 4], "dropout": 0.3}},
            "report": {
                "dcn_config": {"poly_degree": 2, "projection_dim": 3, "stacked_mlp": {"layer_sizes": [5]}},
                "affine_map": {"scale": 2.0, "bias": -1.0},
            },
            "reply": {"mask_net_config": {"mask_blocks": [{"output_size": 4, "aggregation_size": 3}]}},
        },
        "scoring": {"weights": {"fav": 0.5, "reply": 5.0, "report": -234.0}},
    },
    "training": {"save_dir": "unused", "num_train_steps": 1},
    "optimizer": {"dense": {"adam": {}, "learning_rate": {"constant": 0.001}}},
}


def build_config(overrides: list[str] = ()) -> RecapConfig:
    """CONFIG with --set style overrides."""
    return load_config(None, RecapConfig, overrides, data=CONFIG)


def trained_model(config: RecapConfig, steps: int = 8):
    """The model of `config` after a few Adam steps on random batches (so no weight is at its initial value), in eval
    mode."""
    torch.manual_seed(0)
    model_and_loss = build_model_and_loss(config)
    optimizer = torch.optim.Adam(model_and_loss.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss, _ = model_and_loss(random_batch(config, 32, g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model_and_loss.model.eval()


@pytest.fixture(scope="session")
def config() -> RecapConfig:
    return build_config()


@pytest.fixture(scope="session")
def model(config):
    return trained_model(config)


@pytest.fixture(scope="session")
def artifact(model, config, tmp_path_factory):
    return export_serving_artifact(model, config, tmp_path_factory.mktemp("export") / "artifact")


# Run first in a subprocess: any import of the project, torchrec or fbgemm fails, so what runs after it needs torch
# (and numpy / pyarrow) only.
TORCH_ONLY_PRELUDE = """
import importlib.abc, sys
BLOCKED = ("core", "common", "projects", "tools", "torchrec", "fbgemm_gpu")
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in the torch-only scorer: " + name)
        return None
sys.meta_path.insert(0, _Block())
def assert_torch_only():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
"""


@pytest.fixture(scope="session")
def torch_only_prelude() -> str:
    return TORCH_ONLY_PRELUDE


@pytest.fixture(scope="session")
def make_config():
    return build_config


@pytest.fixture(scope="session")
def train():
    return trained_model
