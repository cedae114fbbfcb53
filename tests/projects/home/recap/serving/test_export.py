"""export_serving_artifact: the artifact reproduces the trained model in a process that can import torch only,
for any batch size and number of ids; its metadata describes the inputs; bad models and outputs fail clearly."""

import json
import subprocess
import sys

import pytest
import torch

from projects.home.recap.model.factory import build_model, build_model_and_loss
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.serving.export import ExportError, export_serving_artifact
from projects.home.recap.serving.serving_model import serving_inputs

OUTPUTS = ("logits", "probabilities", "calibrated_probabilities", "score")
FEATURES = ["user_id", "author_id", "hashtags"]


def _cases(config):
    """(name, batch): batch sizes 1 to 33, raw ids of +-2**40 (negative, out of range), NaN/inf continuous values,
    rows without ids, batches without any id."""
    g = torch.Generator().manual_seed(7)
    cases = [(f"batch {b}", random_batch(config, b, g)) for b in (1, 2, 33)]
    cases.append(("no ids at all", random_batch(config, 6, g, max_ids_per_row=0)))
    cases.append(("one row, no ids", random_batch(config, 1, g, max_ids_per_row=0)))
    many = random_batch(config, 5, g, max_ids_per_row=40, id_range=1 << 62)
    cases.append(("many ids per row", many))
    return cases


def test_artifact_reproduces_the_model_in_a_torch_only_process(model, config, artifact, torch_only_prelude, tmp_path):
    cases = _cases(config)
    assert any((b.sparse.lengths() == 0).any() and (b.sparse.lengths() > 0).any() for _, b in cases)
    assert all(torch.isnan(b.continuous).any() for _, b in cases)
    torch.save([serving_inputs(b, FEATURES) for _, b in cases], tmp_path / "inputs.pt")
    script = torch_only_prelude + f"""
import torch
program = torch.export.load({str(artifact / "model.pt2")!r}).module()
outputs = [program(*inputs) for inputs in torch.load({str(tmp_path / "inputs.pt")!r})]
assert_torch_only()
torch.save(outputs, {str(tmp_path / "outputs.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    outputs = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        for (name, batch), got in zip(cases, outputs, strict=True):
            expected = model(batch)
            for key in OUTPUTS:
                shape = (batch.batch_size,) if key == "score" else (batch.batch_size, 3)
                assert got[key].shape == shape, (name, key)
                # The score weighs a probability by up to 234: the same relative tolerance as the probabilities.
                atol = 234 * 1e-5 if key == "score" else 1e-5
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=f"{name}: {key}")


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


def test_artifact_rejects_inconsistent_sparse_inputs(artifact, config):
    program = torch.export.load(artifact / "model.pt2").module()
    batch = random_batch(config, 4, torch.Generator().manual_seed(3), max_ids_per_row=2)
    inputs = list(serving_inputs(batch, FEATURES))
    inputs[4] = [v[:-1] if v.numel() else torch.zeros(1, dtype=torch.int64) for v in inputs[4]]
    with pytest.raises(RuntimeError, match="sparse_lengths do not add up to the number of sparse_values"):
        program(*inputs)


def test_model_without_sparse_features_overwrite_and_training_mode_restored(make_config, train, tmp_path):
    config = make_config(["model.large_embeddings=[]", "data.features.sparse=[]"])
    model = train(config, steps=3)
    first = export_serving_artifact(model, config, tmp_path / "artifact")
    model.train()
    second = export_serving_artifact(model, config, first, overwrite=True, source="runs/x/checkpoint_3")
    assert second == first and model.training
    # No staging or backup directories are left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    metadata = json.loads((first / "metadata.json").read_text())
    assert metadata["sparse_features"] == [] and metadata["source_checkpoint"] == "runs/x/checkpoint_3"
    program = torch.export.load(first / "model.pt2").module()
    model.eval()
    for b in (1, 4):
        batch = random_batch(config, b, torch.Generator().manual_seed(b))
        with torch.no_grad():
            expected = model(batch)["calibrated_probabilities"]
        got = program(*serving_inputs(batch, []))["calibrated_probabilities"]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_meta_tensors_are_an_error(config, tmp_path):
    model = build_model(config, sparse_device="meta")
    with pytest.raises(ExportError, match="on the meta device, not materialized.*large_embeddings"):
        export_serving_artifact(model, config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_and_loss_is_an_error_with_a_hint(config, tmp_path):
    with pytest.raises(ExportError, match="got ModelAndLoss \\(pass model_and_loss.model\\)"):
        export_serving_artifact(build_model_and_loss(config), config, tmp_path / "out")


def test_output_that_cannot_be_written(model, config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportError, match=f"output directory {blocker / 'artifact'} cannot be written"):
        export_serving_artifact(model, config, blocker / "artifact")
    with pytest.raises(ExportError, match="exists and is not a directory"):
        export_serving_artifact(model, config, blocker)


def test_existing_output_needs_overwrite_and_other_files_are_never_replaced(model, config, artifact, tmp_path):
    with pytest.raises(ExportError, match="is not empty; choose another or pass --overwrite"):
        export_serving_artifact(model, config, artifact)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a serving artifact: \\['notes.txt'\\]"):
        export_serving_artifact(model, config, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


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


@pytest.mark.parametrize("mixture", [
    ["model.multi_task_type=mmoe", "model.mixture={num_experts: 3}"],
    ["model.multi_task_type=ple", "model.mixture={num_levels: 2, num_task_experts: 1, num_shared_experts: 1}"],
])
def test_an_expert_mixture_model_exports_and_scores_like_the_model(make_config, train, tmp_path, mixture):
    config = make_config(["model.large_embeddings=[]", "data.features.sparse=[]", *mixture])
    model = train(config, steps=3)
    artifact = export_serving_artifact(model, config, tmp_path / "artifact")
    program = torch.export.load(artifact / "model.pt2").module()
    batch = random_batch(config, 4, torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(batch)["calibrated_probabilities"]
    got = program(*serving_inputs(batch, []))["calibrated_probabilities"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
