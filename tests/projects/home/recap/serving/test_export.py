"""export_serving_artifact: the artifact reproduces the trained model in a process that can import torch only,
for any batch size and number of ids; bad outputs fail clearly (test_metadata.py checks what the artifact says of
the model, test_build.py the models that cannot be exported)."""

import json
import subprocess
import sys

import pytest
import torch

from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.serving.artifact import ExportError
from projects.home.recap.serving.export import export_serving_artifact
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
