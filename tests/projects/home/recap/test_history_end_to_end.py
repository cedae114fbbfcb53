"""A model with an engagement-history encoder, end to end on generated data with histories: training, evaluation,
`recap predict`, the serving export and the standalone scorer all give the same scores for the same rows."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from projects.home.recap.data.config import DatasetConfig  # noqa: E402
from projects.home.recap.data.loader import RecapDataLoader  # noqa: E402
from projects.home.recap.data.synthetic import generate  # noqa: E402
from projects.home.recap.inference import load_for_inference  # noqa: E402
from projects.home.recap.main import main  # noqa: E402
from projects.home.recap.serving.export import export_serving_artifact  # noqa: E402
from projects.home.recap.serving.score_example import request_inputs, table_inputs  # noqa: E402
from projects.home.recap.serving.serving_model import serving_inputs  # noqa: E402

TASKS = ["fav", "reply"]
GROUP = {"max_length": 5, "most_recent": "first", "actions": "history.action", "continuous": ["history.age_hours"],
         "ids": [{"name": "history.author_id", "candidate": "author_id"},
                 {"name": "history.hashtag", "candidate": "hashtags"}]}


# The opt-in settings of each encoder (docs/guides/history.md): the same scores on every path with them on.
OPTIONS = {
    "target_attention": dict(action_weights=True, time_decay={"column": "history.age_hours"}, candidate_features=True,
                             mean_pooling=True, ordinal_actions=True),
    "transformer": dict(candidate_features=True, mean_pooling=True, user_token=True),
}


@pytest.fixture(scope="module", params=["target_attention", "transformer", "target_attention+options",
                                        "transformer+options"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    spec = dataclasses.replace(helpers.SPEC, history_length=8)
    generate(root / "data", helpers.ROWS, seed=5, spec=spec, splits=helpers.SPLITS, row_group_size=64)
    document = helpers.config_dict(root / "data", root / "save")
    del document["data"]["validation"]["single"]
    document["data"]["features"]["sequences"] = {"history": GROUP}
    kind, _, options = request.param.partition("+")
    encoder = ({"target_attention": {"hidden_dims": [8]}} if kind == "target_attention"
               else {"transformer": {"num_layers": 1, "num_heads": 2, "positions": "learned"}})
    document["model"]["sequences"] = {"history": {
        "embedding_dim": 8, "num_actions": 4, "encoder": encoder, **(OPTIONS[kind] if options else {}),
        "tables": {"history.author_id": {"num_embeddings": 64}, "history.hashtag": {"num_embeddings": 32}}}}
    config_file = root / "experiment.yaml"
    config_file.write_text(yaml.safe_dump(document))
    helpers.train_run(config_file)
    return config_file, root


def _model_scores(config, path) -> dict[int, np.ndarray]:
    model = load_for_inference(config, "latest")
    out = {}
    with torch.no_grad():
        for batch in RecapDataLoader(config.data, DatasetConfig(paths=[str(path)]), TASKS, "predict"):
            scores = model(batch)[1]["calibrated_probabilities"]
            out.update(zip(batch.ids["impression_id"].tolist(), scores.numpy()))
    return out


def test_training_evaluation_and_predict_read_the_history(run, tmp_path):
    config_file, root = run
    config = helpers.load(config_file)
    assert main(["evaluate", "--config", str(config_file), "--dataset", "test"]) == 0
    metrics = yaml.safe_load((root / "save" / "eval" / "test" / f"step_{helpers.NUM_TRAIN_STEPS}" /
                              "metrics.json").read_text())
    assert metrics["tasks"]["fav"]["rows"] == 202 and metrics["tasks"]["fav"]["auc"] is not None
    out = tmp_path / "scores"
    assert main(["predict", "--config", str(config_file), "--checkpoint", "latest", "--input",
                 str(root / "data" / "test"), "--output",
                 str(out)]) == 0
    table = pq.read_table(out)
    expected = _model_scores(config, root / "data" / "test")
    got = np.stack([table["fav.calibrated"].to_numpy(), table["reply.calibrated"].to_numpy()], 1)
    want = np.stack([expected[i] for i in table["impression_id"].to_pylist()])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_and_the_standalone_scorer_take_the_history(run, tmp_path):
    config_file, root = run
    config = helpers.load(config_file)
    model = load_for_inference(config, "latest").model
    artifact = export_serving_artifact(model, config, tmp_path / "artifact")
    program = torch.export.load(artifact / "model.pt2").module()
    metadata = yaml.safe_load((artifact / "metadata.json").read_text())
    group = next(spec for spec in metadata["inputs"] if spec["name"] == "histories")["groups"]["history"]
    assert group["max_length"] == 5 and group["tensors"]["history/continuous"]["shape"] == ["requests", 5, 1]
    features = [f["name"] for f in metadata["sparse_features"]]
    test_file = sorted((root / "data" / "test").glob("*.parquet"))[0]
    table = pq.read_table(test_file)
    loader = RecapDataLoader(config.data, DatasetConfig(paths=[str(test_file)]), TASKS, "predict",
                             batch_size=table.num_rows)
    [batch] = list(loader)
    assert int(batch.sequences["history"]["lengths"].max()) == 5  # histories longer than max_length were cut
    with torch.no_grad():
        expected = model(batch)
        served = program(*serving_inputs(batch, features, {"history": 5}))
        scored_inputs = table_inputs(table, metadata, str(test_file))
        scored = program(*scored_inputs)
    # The rows of one request_id share a history: the scorer encodes it once for them (neighbouring requests with
    # identical histories, empty ones, may share one encoding too).
    request_ids = table["request_id"].to_numpy()
    request_of_row = scored_inputs[-1].numpy()
    assert all(len(np.unique(request_of_row[request_ids == r])) == 1 for r in np.unique(request_ids))
    assert request_of_row.max() + 1 <= len(np.unique(request_ids)) < table.num_rows
    for key in ("calibrated_probabilities", "score"):
        torch.testing.assert_close(served[key], expected[key], rtol=0, atol=1e-4)
        torch.testing.assert_close(scored[key], expected[key], rtol=0, atol=1e-4)
    # One request from its rows: the history from the first row, the candidates from all of them.
    rows = np.flatnonzero(request_ids == request_ids[0])
    assert len(rows) > 1
    candidates = table.slice(int(rows[0]), len(rows))
    with torch.no_grad():
        one = program(*request_inputs(table.slice(int(rows[0]), 1), candidates, metadata, str(test_file)))
    for key in ("calibrated_probabilities", "score"):
        torch.testing.assert_close(one[key], expected[key][rows], rtol=0, atol=1e-4)
