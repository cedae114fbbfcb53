"""Sharded exact evaluation (core.sharded_metrics, with core.sharded_ranking and core.sharded_curves): the same
documents as gathering every row, on 1, 2 and 3 gloo ranks, with ties across rank boundaries, fractional weights and
labels, requests and groups cut by the rank split and a task without positives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.collective import Collective
from core.metrics import compute_metrics
from core.metrics_accumulator import MetricsAccumulator
from core.metrics_curves import compute_curves
from core.sharded_sort import score_keys

sys.path.insert(0, str(Path(__file__).parent))
from sharded_metrics_worker import SCORE_WEIGHTS, STRATIFIERS, TASKS, feed, make_data  # noqa: E402
from test_metrics_accumulator import assert_same  # noqa: E402

WORKER = Path(__file__).with_name("sharded_metrics_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def test_one_process_sharded_equals_gather():
    data = make_data()
    docs = {}
    for method in ("gather", "sharded"):
        acc = MetricsAccumulator(method=method)
        feed(acc, data, 0, len(data["predictions"]))
        docs[method] = (acc.compute(TASKS, STRATIFIERS, ndcg_ks=(1, 3), score_weights=SCORE_WEIGHTS),
                        acc.curves(TASKS, num_points=25))
    assert_same(docs["gather"][0], docs["sharded"][0])
    assert_same(docs["gather"][1], docs["sharded"][1])
    with pytest.raises(ValueError, match="method"):
        MetricsAccumulator(method="scatter")


def test_sharded_rejects_float64_scores():
    from core.sharded_metrics import sharded_metrics

    with pytest.raises(ValueError, match="float32"):
        sharded_metrics(Collective(), np.zeros((2, 1)), np.zeros((2, 1)), np.ones((2, 1)), ["a"])


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_equals_gather_on_ranks(tmp_path, world):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = dict(np.load(tmp_path / "data.npz"))
    gather = json.loads((tmp_path / "gather_metrics.json").read_text())
    sharded = json.loads((tmp_path / "sharded_metrics.json").read_text())
    assert_same(gather, sharded)
    # The gather path itself is the whole-set computation.
    reference = compute_metrics(data["predictions"], data["labels"], data["weights"], TASKS, data["stratifiers"],
                                STRATIFIERS, data["group_ids"], data["oracle"])
    assert_same(reference, sharded["tasks"])
    assert sharded["tasks"]["never"]["auc"] is None and sharded["tasks"]["never"]["notes"]
    assert sharded["tasks"]["reply"]["notes"][0].startswith("4 row(s) with a non-finite")
    assert sharded["tasks"]["fav"]["group_auc_groups"] > 30
    assert sharded["ranking"]["requests"] == 86 and sharded["ranking"]["score"]["requests@3"] > 0
    assert_same(json.loads((tmp_path / "gather_curves.json").read_text()),
                json.loads((tmp_path / "sharded_curves.json").read_text()))
    reference_curves = compute_curves(data["predictions"], data["labels"], data["weights"], TASKS, data["oracle"], 25)
    assert_same(reference_curves, json.loads((tmp_path / "sharded_curves.json").read_text())["tasks"])

    for rank in range(world):
        assert_same(sharded, json.loads((tmp_path / f"lonely_rank{rank}.json").read_text()))
    nothing = json.loads((tmp_path / "nothing.json").read_text())
    assert all(block["rows"] == 0 and block["auc"] is None for block in nothing["tasks"].values())
    assert "ranking" not in nothing  # no rank saw a batch, so none knows of request ids

    # Each distinct score on exactly one rank, ranks in increasing score order, every row counted once.
    placement = [np.array(part, dtype=np.int64).reshape(-1, 2) for part in
                 json.loads((tmp_path / "placement.json").read_text())]
    keys = np.concatenate([part[:, 0] for part in placement])
    assert np.all(np.diff(keys) > 0)
    scores = data["predictions"][:, 0]
    assert keys.size == np.unique(score_keys(scores)).size
    assert sum(int(part[:, 1].sum()) for part in placement) == scores.size
    if world > 1:
        assert sum(part.shape[0] > 0 for part in placement) >= 2  # the blocks are spread

    errors = json.loads((tmp_path / "errors.json").read_text())
    assert len(set(errors)) == 1 and "task 'reply': predictions must be probabilities in [0, 1]" in errors[0]

