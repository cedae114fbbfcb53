"""The streaming accumulator: batches in, exact metrics out; a real 2-rank gloo launch equals one process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.metrics import compute_metrics
from core.metrics_accumulator import MetricsAccumulator
from core.metrics_curves import compute_curves
from core.ranking_metrics import ranking_block

WORKER = Path(__file__).with_name("metrics_torchrun_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TASKS = ["fav", "reply", "never"]
STRATIFIERS = ["client", "hour"]


def assert_same(a, b, path="") -> None:
    """Equal structure, equal ints/strings, floats equal to 1e-9 relative (summation order may differ)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _reference(data) -> dict:
    return compute_metrics(data["predictions"], data["labels"], data["weights"], TASKS, data["stratifiers"],
                           STRATIFIERS, data["group_ids"], data["oracle"])


def test_batches_give_the_metrics_of_the_whole_set():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(50, 2)).astype(np.float32)
    y = (rng.uniform(size=(50, 2)) < 0.3).astype(np.float32)
    strat = rng.integers(0, 4, (50, 1))
    acc = MetricsAccumulator()
    for i in range(0, 50, 16):
        acc.update(torch.from_numpy(p[i : i + 16]), torch.from_numpy(y[i : i + 16]),
                   stratifiers=torch.from_numpy(strat[i : i + 16]))
    assert acc.num_rows == 50
    doc = acc.compute(["a", "b"], ["s"], dataset="valid", step=7)
    assert doc["dataset"] == "valid" and doc["step"] == 7 and doc["checkpoint"] is None
    assert_same(compute_metrics(p, y, None, ["a", "b"], strat, ["s"]), doc["tasks"])
    curves = acc.curves(["a", "b"], num_points=30, dataset="valid", step=7)
    assert curves["dataset"] == "valid" and curves["step"] == 7
    assert_same(compute_curves(p, y, None, ["a", "b"], num_points=30), curves["tasks"])


def test_bf16_and_reset():
    acc = MetricsAccumulator()
    acc.update(torch.tensor([[0.25], [0.75]], dtype=torch.bfloat16), torch.tensor([[0.0], [1.0]]))
    assert acc.compute(["a"])["tasks"]["a"]["auc"] == 1.0
    acc.reset()
    assert acc.num_rows == 0
    acc.update(torch.tensor([[0.75], [0.25]]), torch.tensor([[0.0], [1.0]]))
    assert acc.compute(["a"])["tasks"]["a"]["auc"] == 0.0


def test_empty_accumulator_gives_flagged_nulls():
    doc = MetricsAccumulator().compute(["a"], ["s"])
    block = doc["tasks"]["a"]
    assert block["auc"] is None and block["count"] == 0.0 and block["notes"]
    assert block["strata"] == {"s": {}}
    json.dumps(doc, allow_nan=False)


def test_inconsistent_batches_are_rejected():
    acc = MetricsAccumulator()
    acc.update(torch.rand(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same inputs"):
        acc.update(torch.rand(4, 2), torch.zeros(4, 2), oracle=torch.rand(4, 2))
    with pytest.raises(ValueError, match="labels must have the shape"):
        acc.update(torch.rand(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="group_ids must have shape"):
        acc.update(torch.rand(4, 2), torch.zeros(4, 2), group_ids=torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        acc.compute(["a", "b", "c"])


@pytest.mark.slow
def test_two_rank_gloo_launch_equals_single_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    data = dict(np.load(tmp_path / "data.npz"))
    reference = _reference(data)

    uneven = json.loads((tmp_path / "uneven_metrics.json").read_text())
    assert uneven["dataset"] == "valid" and uneven["step"] == 3 and uneven["checkpoint"] == "ckpt"
    assert_same(reference, uneven["tasks"])
    assert uneven["tasks"]["fav"]["rows"] == 203 and "group_auc" in uneven["tasks"]["fav"]
    assert uneven["tasks"]["never"]["auc"] is None and uneven["tasks"]["never"]["notes"]
    # The request cut by the rank split counts once, whole: the ranking block equals the one-process one.
    ranking = ranking_block(data["predictions"], data["labels"], data["weights"], data["request_ids"], TASKS,
                            (3, 5), [1.0, 4.0, -2.0], "request_id")
    assert ranking["requests"] == 29 and ranking["score"]["requests@3"] > 0
    assert_same(ranking, uneven["ranking"])
    curves = json.loads((tmp_path / "uneven_curves.json").read_text())
    ref_curves = compute_curves(data["predictions"], data["labels"], data["weights"], TASKS, data["oracle"], 20)
    assert_same(ref_curves, curves["tasks"])

    for rank in (0, 1):
        lopsided = json.loads((tmp_path / f"lopsided_rank{rank}.json").read_text())
        assert_same(reference, lopsided["tasks"])

    empty = json.loads((tmp_path / "empty.json").read_text())
    assert set(empty["tasks"]) == set(TASKS)
    assert all(block["auc"] is None and block["rows"] == 0 for block in empty["tasks"].values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in empty["tasks"]["fav"].values())
