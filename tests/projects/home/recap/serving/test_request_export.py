"""The serving artifact on requests: histories one per request with each row's request in request_of_row, for every
history encoder with and without actions, continuous values and match features; it equals row-by-row scoring and the
eager model, refuses bad history inputs by name, and an artifact of the older per-row format is refused clearly."""

import copy
import dataclasses
import json
import shutil

import pytest
import torch

from common.history import padded_history
from core.config import load_config
from projects.home.recap.model.synthetic_batch import random_batch, random_history
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.export import export_serving_artifact
from projects.home.recap.serving.score_example import check_inputs, load_artifact
from projects.home.recap.serving.serving_model import serving_inputs

from .conftest import CONFIG, trained_model

FEATURES = ["user_id", "author_id", "hashtags"]
L = 5
FULL = {"max_length": L, "most_recent": "first", "actions": "history.action", "continuous": ["history.age_hours"],
        "ids": [{"name": "history.author_id", "candidate": "author_id"},
                {"name": "history.hashtag", "candidate": "hashtags"}]}
# Ids only: no actions, no continuous values, no match features.
BARE = {"max_length": L, "most_recent": "first", "ids": [{"name": "history.author_id", "candidate": "author_id"}]}
ENCODERS = {
    "pooling": {"pooling": {"mode": "mean"}},
    "target_attention": {"target_attention": {"hidden_dims": [8], "softmax": True}},
    "transformer": {"transformer": {"num_layers": 2, "num_heads": 2, "positions": "rotary", "causal": True}},
}


def history_config(encoder: str, features: str) -> RecapConfig:
    document = copy.deepcopy(CONFIG)
    full = features == "all"
    document["data"]["features"]["sequences"] = {"history": FULL if full else BARE}
    tables = {"history.author_id": {"num_embeddings": 64}}
    if full:
        tables["history.hashtag"] = {"num_embeddings": 32, "id_transform": "mod"}
    document["model"]["sequences"] = {"history": {
        "embedding_dim": 4, "num_actions": 4 if full else None, "encoder": ENCODERS[encoder], "tables": tables,
        "match_features": full}}
    return load_config(None, RecapConfig, [], data=document)


@pytest.fixture(scope="module", params=[(e, f) for e in ENCODERS for f in ("all", "ids")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    config = history_config(*request.param)
    model = trained_model(config, steps=2)
    artifact = export_serving_artifact(model, config, tmp_path_factory.mktemp("export") / "artifact")
    return config, model, artifact


def _rows_of_requests(group: dict[str, torch.Tensor], request_of_row: torch.Tensor,
                      candidates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A jagged group with one history per request as the loader gives its rows: each row its request's items."""
    ends = torch.cumsum(group["lengths"], 0)
    starts = ends - group["lengths"]
    items = torch.cat([torch.arange(int(starts[r]), int(ends[r])) for r in request_of_row.tolist()])
    out = {"lengths": group["lengths"][request_of_row]}
    out.update({k: v[items] for k, v in group.items() if k != "lengths" and not k.startswith("candidate:")})
    out.update(candidates)
    return out


def _case(config: RecapConfig, request_of_row: torch.Tensor, seed: int, empty: bool = False):
    """(a batch of rows whose histories are their requests', the artifact's inputs on the request path, the same
    rows row by row)."""
    g = torch.Generator().manual_seed(seed)
    rows, requests = request_of_row.shape[0], int(request_of_row.max()) + 1
    batch = random_batch(config, rows, g)
    group = config.data.features.sequences["history"]
    jagged = random_history(group, requests, g, num_actions=config.model.sequences["history"].num_actions or 4)
    if empty:
        jagged = {k: v[:0] if k != "lengths" else torch.zeros_like(v) for k, v in jagged.items()}
    candidates = {k: v for k, v in batch.sequences["history"].items() if k.startswith("candidate:")}
    batch = dataclasses.replace(batch, sequences={"history": _rows_of_requests(jagged, request_of_row, candidates)})
    per_row = serving_inputs(batch, FEATURES, {"history": L}, share_requests=False)
    histories = padded_history({k: v for k, v in jagged.items() if not k.startswith("candidate:")}, L, "history/")
    histories.update({"history/" + k: v for k, v in candidates.items()})
    return batch, (*per_row[:6], histories, request_of_row), per_row


CASES = {
    "one request of one candidate": (torch.tensor([0]), False),
    "one request of nine candidates": (torch.zeros(9, dtype=torch.int64), False),
    "one empty history, four candidates": (torch.zeros(4, dtype=torch.int64), True),
    # Requests of 1, 4, 2, 3 and 1 candidates, the rows in no particular order (random_history leaves request 0,
    # 4, ... empty).
    "mixed, unordered": (torch.tensor([2, 1, 1, 3, 0, 1, 3, 2, 1, 3, 4]), False),
}


def test_the_request_path_equals_row_by_row_and_the_eager_model(exported):
    config, model, artifact = exported
    program, metadata = load_artifact(artifact)
    for seed, (name, (request_of_row, empty)) in enumerate(CASES.items()):
        batch, requests, rows = _case(config, request_of_row, seed, empty)
        assert requests[6]["history/mask"].shape[0] == int(request_of_row.max()) + 1 < len(request_of_row) or \
            len(request_of_row) == 1
        with torch.no_grad():
            expected = model(batch)
            got = program(*requests)
            alone = program(*rows)
        for key in metadata["outputs"]:
            atol = 234 * 1e-5 if key == "score" else 1e-5  # the score weighs a probability by up to 234
            torch.testing.assert_close(got[key], alone[key], rtol=0, atol=atol, msg=f"{name}: {key}")
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=f"{name}: {key}")


def test_the_artifact_describes_its_request_inputs(exported):
    config, _, artifact = exported
    metadata = json.loads((artifact / "metadata.json").read_text())
    assert metadata["format"] == "recap-serving/2"
    names = [spec["name"] for spec in metadata["inputs"]]
    assert names[-2:] == ["histories", "request_of_row"]
    request = metadata["inputs"][-1]
    assert request["dtype"] == "int64" and request["shape"] == ["batch"]
    tensors = metadata["inputs"][-2]["groups"]["history"]["tensors"]
    assert tensors["history/mask"]["shape"] == ["requests", L]
    assert tensors["history/candidate:history.author_id"]["shape"] == ["batch"]
    assert "request_of_row" in (artifact / "README.md").read_text()


def test_bad_history_inputs_stop_the_artifact_by_name(exported):
    config, _, artifact = exported
    program, metadata = load_artifact(artifact)
    _, requests, _ = _case(config, torch.tensor([0, 1, 1]), seed=9)
    histories, request_of_row = requests[6], requests[7]
    with pytest.raises(RuntimeError, match=r"request_of_row holds values outside \[0, requests\) \(one request "
                                           r"per row of the history tensors of group 'history'\)"):
        program(*requests[:6], histories, torch.tensor([0, 2, 1]))
    if "history/actions" in histories:
        for value in (4, -1):
            actions = histories["history/actions"].clone()
            actions[1, 0] = value
            with pytest.raises(RuntimeError, match=r"history/actions holds values outside \[0, 4\) "
                                                   r"\(model.sequences.history.num_actions is 4\)"):
                program(*requests[:6], {**histories, "history/actions": actions}, request_of_row)
    floats = {**histories, "history/id:history.author_id": histories["history/id:history.author_id"].float()}
    with pytest.raises(RuntimeError, match=r"dtype mismatch"):
        program(*requests[:6], floats, request_of_row)
    # The scorer's check names the input.
    check_inputs(requests, metadata)
    with pytest.raises(ValueError, match=r"input histories\['history/id:history.author_id'\] holds torch.float32; "
                                         r"the model takes int64"):
        check_inputs((*requests[:6], floats, request_of_row), metadata)
    with pytest.raises(ValueError, match=r"input request_of_row holds torch.int32; the model takes int64"):
        check_inputs((*requests[:6], histories, request_of_row.int()), metadata)


def test_an_artifact_of_the_per_row_format_is_refused_clearly(exported, tmp_path):
    _, _, artifact = exported
    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    metadata = json.loads((old / "metadata.json").read_text())
    metadata["format"] = "recap-serving/1"
    (old / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"old/metadata.json: format 'recap-serving/1' takes one history per row "
                                         r"and no request_of_row.*Re-export the checkpoint"):
        load_artifact(old)
    # Without histories the two formats take the same inputs: such an artifact still loads.
    metadata["inputs"] = [spec for spec in metadata["inputs"] if spec["name"] not in ("histories", "request_of_row")]
    (old / "metadata.json").write_text(json.dumps(metadata))
    assert load_artifact(old)[1]["format"] == "recap-serving/1"


def test_the_serving_benchmark_scores_the_same_rows_both_ways(tmp_path):
    from projects.home.recap.benchmarks.serving import main

    output = tmp_path / "figures.json"
    assert main(["--length", "4", "--candidates", "4", "--rows", "8", "--encoders", "transformer", "--seconds", "0",
                 "--output", str(output)]) == 0
    [figures] = json.loads(output.read_text())
    assert figures["requests"] == 2 and figures["max_abs_logit_difference"] <= 1e-5
    assert figures["request_path"]["rows_per_second"] > 0 and figures["row_by_row"]["repeats"] >= 5
