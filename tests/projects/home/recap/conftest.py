"""Fixtures shared by the evaluate / inference / predict tests: tiny generated data and a run trained on it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return helpers.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    """(config file, save_dir) of a tiny run trained for 6 steps (checkpoints at 3 and 6)."""
    root = tmp_path_factory.mktemp("run")
    config_file = helpers.write_config(root / "experiment.yaml", data_dir, root / "save")
    return config_file, helpers.train_run(config_file)
