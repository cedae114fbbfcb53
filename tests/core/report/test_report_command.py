"""`recap report RUN_DIR [--compare OTHER] [--output DIR] [--step N]` end to end on saved run directories."""

import json

from projects.home.recap.main import main


def test_report_rebuilds_from_the_latest_step(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = run_dir / "report"
    assert {p.name for p in out.iterdir()} == {"report.html", "report.json", "report.md"}
    assert str(out / "report.html") in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    assert {d: m["step"] for d, m in summary["datasets"].items()} == {"test": 200, "valid": 200}
    assert "<svg" in (out / "report.html").read_text()


def test_report_at_an_earlier_step_into_another_directory(run_dir, tmp_path):
    assert main(["report", str(run_dir), "--step", "100", "--output", str(tmp_path / "r100")]) == 0
    summary = json.loads((tmp_path / "r100" / "report.json").read_text())
    assert {d: m["step"] for d, m in summary["datasets"].items()} == {"test": 100}  # valid has no step 100
    saved = json.loads((run_dir / "eval/test/step_100/metrics.json").read_text())
    assert summary["datasets"]["test"]["tasks"]["fav"]["auc"] == saved["tasks"]["fav"]["auc"]


def test_compare_two_runs(run_dir, baseline_dir):
    assert main(["report", str(run_dir), "--compare", str(baseline_dir)]) == 0
    out = run_dir / "report" / "compare_baseline_run"
    doc = json.loads((out / "comparison.json").read_text())
    assert set(doc["datasets"]) == {"test", "valid"}
    assert (out / "comparison.html").is_file() and (out / "comparison.md").is_file()


def test_missing_evaluations_are_a_clear_error(tmp_path, run_dir, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no evaluation found" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--step", "7"]) == 1
    assert "no evaluation at step 7 (steps evaluated: [100, 200])" in capsys.readouterr().err


def test_corrupt_metrics_file_is_named(run_dir, capsys):
    broken = run_dir / "eval/test/step_300"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    assert main(["report", str(run_dir)]) == 1
    assert f"{broken / 'metrics.json'}: not readable JSON" in capsys.readouterr().err
