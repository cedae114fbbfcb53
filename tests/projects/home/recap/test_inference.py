"""load_for_inference: an unsharded CPU model with the weights of a checkpoint named in every accepted way, strict
about what it loads; from a 2-rank sharded checkpoint it scores like the 2-rank `recap predict`, and its export
artifact scores like it."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from core.checkpoint import CheckpointError  # noqa: E402
from projects.home.recap.data.config import DatasetConfig  # noqa: E402
from projects.home.recap.data.loader import RecapDataLoader  # noqa: E402
from projects.home.recap.inference import load_for_inference  # noqa: E402
from projects.home.recap.main import main  # noqa: E402
from projects.home.recap.serving.score_example import load_artifact, table_inputs  # noqa: E402


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def scores(model, config, path: Path) -> dict[int, np.ndarray]:
    """impression_id -> [probabilities..., calibrated probabilities...] of the in-process model."""
    out = {}
    with torch.no_grad():
        for batch in RecapDataLoader(config.data, DatasetConfig(paths=[str(path)]), ["fav", "reply"], "predict"):
            o = model(batch)[1]
            both = torch.cat([o["probabilities"], o["calibrated_probabilities"]], 1)
            out.update(zip(batch.ids["impression_id"].tolist(), both.numpy()))
    return out


def test_every_way_of_naming_the_checkpoint_loads_it(trained_run):
    config_file, save_dir = trained_run
    config = helpers.load(config_file)
    latest = load_for_inference(config, "latest")
    assert latest.training is False
    tensors = list(latest.named_parameters()) + list(latest.named_buffers())
    assert all(t.device.type == "cpu" and not t.is_meta for _, t in tensors)
    table = latest.model.large_embeddings.embedding_bags["user"].weight
    assert type(table.detach()) is torch.Tensor and table.shape == (100, 4)
    expected = state(latest)
    for name in (save_dir, save_dir / "checkpoints", save_dir / "checkpoints" / "step_00000006"):
        loaded = state(load_for_inference(config, str(name)))
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name
    earlier = state(load_for_inference(config, str(save_dir / "checkpoints" / "step_00000003")))
    assert not torch.equal(earlier["model.large_embeddings.embedding_bags.user.weight"],
                           expected["model.large_embeddings.embedding_bags.user.weight"])


def test_missing_or_mismatched_checkpoints_are_errors_naming_the_path(trained_run, data_dir, tmp_path):
    config_file, save_dir = trained_run
    config = helpers.load(config_file)
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nothing'} does not exist"):
        load_for_inference(config, str(tmp_path / "nothing"))
    fresh = helpers.load(config_file, [f"training.save_dir={tmp_path / 'fresh'}"])
    with pytest.raises(CheckpointError, match=f"no checkpoint yet: {tmp_path / 'fresh' / 'checkpoints'}"):
        load_for_inference(fresh, "latest")
    other = helpers.load(config_file, ["model.tasks.fav.mlp_config.layer_sizes=[5]"])
    step = save_dir / "checkpoints" / "step_00000006"
    with pytest.raises(CheckpointError, match=rf"checkpoint {step} does not fit .*: model.model.dense.task_modules.fav."
                                              r"tower.layers.0.weight has shape \(4, 8\), this run has \(5, 8\)"):
        load_for_inference(other, str(step))


@pytest.mark.slow
def test_a_two_rank_checkpoint_scores_like_two_rank_predict_and_its_export(data_dir, tmp_path):
    config_file = helpers.write_config(tmp_path / "experiment.yaml", data_dir, tmp_path / "save")
    done = helpers.recap("train", "--config", str(config_file), "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    step_dir = tmp_path / "save" / "checkpoints" / "step_00000006"
    assert json.loads((step_dir / "checkpoint.json").read_text())["world_size"] == 2
    # 201 rows in batches of 50: rank 0 scores 2 batches, rank 1 scores 3 (rank 0 pads one collective step).
    done = helpers.recap("predict", "--config", str(config_file), "--checkpoint", "latest", "--input",
                         str(data_dir / "validation"), "--output", str(tmp_path / "scores"), "--batch-size", "50",
                         "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == [
        "part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    predicted = pq.read_table(tmp_path / "scores")
    assert predicted.num_rows == 201

    config = helpers.load(config_file)
    model = load_for_inference(config, str(step_dir))
    expected = scores(model, config, data_dir / "validation")
    ids = predicted["impression_id"].to_pylist()
    columns = [f"{t}.probability" for t in ("fav", "reply")] + [f"{t}.calibrated" for t in ("fav", "reply")]
    got = np.stack([predicted[c].to_numpy() for c in columns], 1)
    np.testing.assert_allclose(got, np.stack([expected[i] for i in ids]), rtol=0, atol=1e-5)

    artifact = tmp_path / "artifact"
    assert main(["export", "--config", str(config_file), "--checkpoint", str(step_dir), "--output",
                 str(artifact)]) == 0
    served, metadata = load_artifact(artifact)
    table = pq.read_table(data_dir / "validation")
    with torch.no_grad():
        out = served(*table_inputs(table, metadata))
    rows = np.stack([expected[i] for i in table["impression_id"].to_pylist()])
    np.testing.assert_allclose(out["probabilities"].numpy(), rows[:, :2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["calibrated_probabilities"].numpy(), rows[:, 2:], rtol=0, atol=1e-5)
