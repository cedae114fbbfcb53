"""The artifact's metadata.json and README.md (serving/metadata.py, serving/artifact_readme.py) describe the inputs,
outputs, sparse features and calibration of the model exported, and an export whose config does not describe the
model stops by name."""

import json

import pytest
import torch

from projects.home.recap.serving.artifact import ExportError
from projects.home.recap.serving.export import export_serving_artifact

FEATURES = ["user_id", "author_id", "hashtags"]


def test_metadata_describes_the_inputs(model, artifact):
    metadata = json.loads((artifact / "metadata.json").read_text())
    assert sorted(p.name for p in artifact.iterdir()) == [
        "README.md", "list_checks.py", "metadata.json", "model.pt2", "score_example.py"]
    assert metadata["tasks"] == model.task_names == ["fav", "report", "reply"]
    inputs = {spec["name"]: spec for spec in metadata["inputs"]}
    assert [spec["name"] for spec in metadata["inputs"]] == [
        "continuous", "binary", "discrete", "embeddings", "sparse_values", "sparse_lengths"
    ]
    assert inputs["continuous"]["shape"] == ["batch", 6]
    assert inputs["continuous"]["columns"] == [{"name": "counts", "length": 5}, {"name": "ratio", "length": None}]
    assert [c["name"] for c in inputs["discrete"]["columns"]] == ["country", "position", "hour"]
    assert inputs["embeddings"]["shape"] == ["batch", 7]
    # Table order, the unused sparse column left out.
    assert inputs["sparse_values"]["features"] == inputs["sparse_lengths"]["features"] == FEATURES
    sparse = {f["name"]: f for f in metadata["sparse_features"]}
    assert sparse["author_id"] == {
        "name": "author_id", "table": "people", "num_embeddings": 97, "embedding_dim": 4, "pooling": "mean",
        "id_transform": "hash",
    }
    assert (sparse["hashtags"]["pooling"], sparse["hashtags"]["id_transform"]) == ("sum", "mod")
    assert metadata["calibration"]["report"] == {"pos_rate": 0.5, "neg_rate": 0.2}
    assert metadata["outputs"]["score"] == ["batch"] and metadata["outputs"]["logits"] == ["batch", 3]
    assert metadata["scoring"]["weights"] == {"fav": 0.5, "report": -234.0, "reply": 5.0}
    assert metadata["ignored_at_serving"] == ["position"] and metadata["id_columns"] == ["impression_id"]
    assert metadata["versions"]["torch"] == torch.__version__
    # The same metadata travels inside model.pt2.
    extra = {"metadata.json": ""}
    torch.export.load(artifact / "model.pt2", extra_files=extra)
    assert json.loads(extra["metadata.json"]) == metadata
    readme = (artifact / "README.md").read_text()
    assert "torch.export.load" in readme and "fav, report, reply" in readme
    assert "`score` [batch]: the ranking score, 0.5 * fav + -234 * report + 5 * reply" in readme


def test_config_must_describe_the_model(model, make_config, tmp_path):
    resampled = make_config(["data.tasks.fav.neg_rate=0.5"])
    with pytest.raises(ExportError, match="task 'fav': the model calibrates with log ratio -2.30259, but data.tasks.fav"):
        export_serving_artifact(model, resampled, tmp_path / "out")
    other_tasks = make_config(["model.tasks={fav: {mlp_config: {layer_sizes: [2]}}}", "model.scoring=null"])
    with pytest.raises(ExportError, match="the model's tasks \\['fav', 'report', 'reply'\\] are not the config's"):
        export_serving_artifact(model, other_tasks, tmp_path / "out")
    reweighted = make_config(["model.scoring.weights.fav=2.0"])
    with pytest.raises(ExportError, match="the model scores with weights \\[0.5, -234.0, 5.0\\], but the config's"):
        export_serving_artifact(model, reweighted, tmp_path / "out")
