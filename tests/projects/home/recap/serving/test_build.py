"""The checks before a ServingRanker is built (serving/build.py): a model on the meta device, or a ModelAndLoss
passed for its model, stops the export by name before anything is written."""

import pytest

from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.serving.artifact import ExportError
from projects.home.recap.serving.export import export_serving_artifact


def test_meta_tensors_are_an_error(config, tmp_path):
    model = build_model(config, sparse_device="meta")
    with pytest.raises(ExportError, match="on the meta device, not materialized.*large_embeddings"):
        export_serving_artifact(model, config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_and_loss_is_an_error_with_a_hint(config, tmp_path):
    with pytest.raises(ExportError, match="got ModelAndLoss \\(pass model_and_loss.model\\)"):
        export_serving_artifact(build_model_and_loss(config), config, tmp_path / "out")
