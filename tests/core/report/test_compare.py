"""Two runs side by side: deltas are run − baseline per dataset and task, with the better direction marked."""

import json

import pytest

from core.report import RunResults, compare_runs, load_run, write_comparison
from core.report.format import direction
from core.report.run_files import Evaluation


def _run(name: str, tasks: dict, dataset: str = "test") -> RunResults:
    return RunResults(name, None, [Evaluation({"dataset": dataset, "step": 5, "tasks": tasks})])


def test_deltas_directions_and_missing_tasks():
    run = _run("new", {"fav": {"auc": 0.80, "logloss": 0.30, "calibration": 1.05, "rce": None},
                       "reply": {"auc": 0.7}})
    baseline = _run("old", {"fav": {"auc": 0.75, "logloss": 0.35, "calibration": 0.90, "rce": 3.0},
                            "share": {"auc": 0.6}})
    doc = compare_runs(run, baseline)
    fav = doc["datasets"]["test"]["tasks"]["fav"]
    assert fav["auc"]["delta"] == pytest.approx(0.05) and fav["auc"]["direction"] == "better"
    assert fav["logloss"]["delta"] == pytest.approx(-0.05) and fav["logloss"]["direction"] == "better"
    assert fav["calibration"]["direction"] == "better"  # 1.05 is closer to 1 than 0.90
    assert fav["rce"] == {"run": None, "baseline": 3.0, "delta": None, "direction": None}
    assert "group_auc" not in fav  # neither run computed it
    assert doc["datasets"]["test"]["only_in_run"] == ["reply"]
    assert doc["datasets"]["test"]["only_in_baseline"] == ["share"]
    json.dumps(doc, allow_nan=False)


def test_datasets_in_one_run_only_are_listed():
    doc = compare_runs(_run("a", {"fav": {}}, "test"), _run("b", {"fav": {}}, "valid"))
    assert doc["datasets"] == {} and doc["only_in_run"] == ["test"] and doc["only_in_baseline"] == ["valid"]


def test_direction_rules():
    assert direction("auc", 0.6, 0.7) == "worse" and direction("logloss", 0.6, 0.7) == "better"
    assert direction("calibration", 0.8, 1.2) is None and direction("count", 2.0, 1.0) is None
    assert direction("rce", None, 1.0) is None


def test_comparison_files_from_two_saved_runs(run_dir, baseline_dir, tmp_path):
    paths = write_comparison(tmp_path / "cmp", load_run(run_dir), load_run(baseline_dir))
    doc = json.loads(paths["comparison.json"].read_text())
    ours = json.loads((run_dir / "eval/test/step_200/metrics.json").read_text())["tasks"]["fav"]
    theirs = json.loads((baseline_dir / "eval/test/step_200/metrics.json").read_text())["tasks"]["fav"]
    auc = doc["datasets"]["test"]["tasks"]["fav"]["auc"]
    assert auc["delta"] == pytest.approx(ours["auc"] - theirs["auc"])
    assert auc["direction"] == "better"  # the run's predictions are less noisy
    html = paths["comparison.html"].read_text()
    assert "good_run" in html and "baseline_run" in html and 'class="better"' in html
    assert 'aria-label="ROC — fav"' in html and 'aria-label="loss"' in html
    assert "http" not in html.lower() and "<script" not in html
    md = paths["comparison.md"].read_text()
    assert f"{auc['delta']:+.4f} (+)" in md and "| task | AUC run | AUC baseline | AUC Δ |" in md
