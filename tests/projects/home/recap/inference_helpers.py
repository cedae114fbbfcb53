"""A tiny recap experiment for the evaluation, prediction and inference tests: generated data with oracle columns,
a small config with every input kind, a few training steps in this process, and the recap command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from projects.home.recap.data.synthetic import LABEL_PREFIX, SyntheticSpec, generate
from projects.home.recap.schema import RecapConfig, load_recap_config

REPO = Path(__file__).resolve().parents[4]
SPEC = SyntheticSpec(
    num_continuous=6, num_binary=3, num_users=500, num_authors=200, num_hashtags=100,
    embeddings=(("user_embedding", 4),), tasks=(("is_favorited", 0.2), ("is_replied", 0.05)),
)
# 201 validation rows: on 2 ranks with eval batches of 50, rank 0 gets 100 rows (2 batches), rank 1 101 (3 batches).
SPLITS = (("train", 600.0), ("validation", 201.0), ("test", 202.0))
ROWS = 1003
NUM_TRAIN_STEPS = 6


def make_data(directory: Path) -> Path:
    """OUT/{train,validation,test}/ from the generator, and OUT/single/one.parquet: a validation set of 1 row."""
    generate(directory, ROWS, seed=5, spec=SPEC, splits=SPLITS, row_group_size=64)
    (directory / "single").mkdir()
    pq.write_table(pq.read_table(directory / "test").slice(0, 1), directory / "single" / "one.parquet")
    return directory


def config_dict(data_dir: Path, save_dir: Path) -> dict:
    """The experiment as a YAML-able dict."""
    return {
        "data": {
            "features": {
                "continuous": [{"name": "recap.continuous", "length": 6}],
                "binary": [{"name": "recap.binary", "length": 3}],
                "discrete": ["client_id", "author_type", "hour_of_day", "position"],
                "sparse": ["user_id", "author_id", "hashtags"],
                "embeddings": [{"name": "user_embedding", "dim": 4}],
                "ids": ["impression_id", "request_id"],
            },
            "tasks": {
                "fav": {"label": LABEL_PREFIX + "is_favorited", "neg_rate": 0.5},
                "reply": {"label": LABEL_PREFIX + "is_replied"},
            },
            "downsampling_correction": "calibration",
            "train": {"paths": [str(data_dir / "train")]},
            "validation": {
                "validation": {"paths": [str(data_dir / "validation")]},
                "test": {"paths": [str(data_dir / "test")]},
                "single": {"paths": [str(data_dir / "single")]},
            },
            "batch_size": 64,
            "eval_batch_size": 50,
            "num_workers": 0,
            "shuffle_buffer_rows": 128,
        },
        "model": {
            "small_embeddings": [{"feature": "client_id", "num_embeddings": 16, "embedding_dim": 2}],
            "large_embeddings": [
                {"name": "user", "feature_names": ["user_id"], "num_embeddings": 100, "embedding_dim": 4},
                {"name": "author", "feature_names": ["author_id", "hashtags"], "num_embeddings": 50,
                 "embedding_dim": 4, "id_transform": "mod", "pooling": "sum"},
            ],
            "position_debias": {"feature": "position", "num_positions": 32, "embedding_dim": 2},
            "multi_task_type": "share_all",
            "backbone": {"mlp_config": {"layer_sizes": [16, 8], "batch_norm": {}}},
            "tasks": {
                "fav": {"mlp_config": {"layer_sizes": [4]}},
                "reply": {"mlp_config": {"layer_sizes": [4]}},
            },
            "scoring": {"weights": {"fav": 1.0, "reply": 5.0}},
        },
        "training": {
            "save_dir": str(save_dir),
            "num_train_steps": NUM_TRAIN_STEPS,
            "checkpoint_every_n": 3,
            "train_log_every_n": 3,
            "device": "cpu",
        },
        "optimizer": {"dense": {"adam": {}, "learning_rate": {"constant": 0.01}}},
        "evaluation": {
            "stratifiers": ["client_id"],
            "group_auc_column": "hour_of_day",
            "request_column": "request_id",
            "ndcg_k": [3, 5],
            "datasets": ["validation", "test"],
            "curve_points": 20,
        },
    }


def write_config(path: Path, data_dir: Path, save_dir: Path, **sections) -> Path:
    """Write the experiment YAML to `path`; `sections` update top-level sections key by key."""
    document = config_dict(data_dir, save_dir)
    for section, values in sections.items():
        document[section].update(values)
    path.write_text(yaml.safe_dump(document))
    return path


def load(path: Path, overrides: list[str] = ()) -> RecapConfig:
    return load_recap_config(path, overrides)


def train_run(config_file: Path, overrides: list[str] = ()) -> Path:
    """Train (or resume) the experiment in this process (one rank); returns its save_dir."""
    from core.distributed import init_distributed, shutdown_distributed
    from projects.home.recap.train import train

    config = load(config_file, overrides)
    try:
        train(config, init_distributed("cpu"))
    finally:
        shutdown_distributed()
    return Path(config.training.save_dir)


def recap(*args: str, timeout: float = 240, torchrun: int | None = None) -> subprocess.CompletedProcess:
    """Run the recap command line in a subprocess from the repository root (under torchrun with that many
    processes)."""
    runner = [sys.executable, "-m", "projects.home.recap.main"]
    if torchrun is not None:
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                  "-m", "projects.home.recap.main"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(runner + list(args), cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=timeout)

