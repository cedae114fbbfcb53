"""write_report / write_run_report: the files, a self-contained HTML page with its plots, the Markdown tables."""

import json
import re
import xml.etree.ElementTree as ET

from core.report import load_run, write_report, write_run_report

TASKS = ["fav", "reply", "report"]


def _assert_self_contained(html: str) -> None:
    lowered = html.lower()
    for external in ("http://", "https://", "src=", "<script", "<link", "@import", "url(http"):
        assert external not in lowered, f"the page references {external!r}"


def _svgs(html: str) -> list[str]:
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    for svg in svgs:
        ET.fromstring(svg)  # every figure is well-formed markup
    return svgs


def test_one_evaluation_writes_json_html_and_markdown(tmp_path, make_evaluation):
    metrics, curves = make_evaluation(0.05)
    scalars = {"loss/fav": [(0, 1.0), (10, 0.5)], "loss/reply": [(0, 2.0), (10, 1.0)]}
    paths = write_report(tmp_path / "out", metrics, curves, scalars)
    assert sorted(paths) == ["curves.json", "metrics.json", "report.html", "report.md"]
    assert json.loads(paths["metrics.json"].read_text()) == metrics
    assert json.loads(paths["curves.json"].read_text())["tasks"].keys() == set(TASKS)

    html = paths["report.html"].read_text()
    _assert_self_contained(html)
    svgs = _svgs(html)
    # Four plots per task plus one training chart (the two loss tags share a chart).
    assert len(svgs) == 4 * len(TASKS) + 1
    for task in TASKS:
        for plot in ("ROC", "Precision-recall", "Reliability", "Scores"):
            assert f'aria-label="{plot} — {task}"' in html
    assert "<polyline" in svgs[0] and "oracle" in svgs[0]
    # The single-class task has undefined ROC / PR, shown as placeholders with the reason and a note.
    assert "undefined: a single class" in html and "no positive labels" in html
    assert "client" in html and "group AUC" in html and "RCE % of oracle" in html

    md = paths["report.md"].read_text()
    assert "| task | rows | count (Σw) | pos rate | AUC | group AUC |" in md
    fav = metrics["tasks"]["fav"]
    assert f"| fav | {fav['rows']:,} |" in md and f"{fav['auc']:.4f}" in md
    assert "### `fav` by `client`" in md and "report: no positive labels" in md
    assert "| loss/fav | 10 | 0.5 |" in md


def test_curves_tasks_mapping_is_accepted_and_missing_curves_are_reported(tmp_path, make_evaluation):
    metrics, curves = make_evaluation(0.05)
    paths = write_report(tmp_path / "a", metrics, curves["tasks"])
    assert json.loads(paths["curves.json"].read_text())["step"] == metrics["step"]
    paths = write_report(tmp_path / "b", metrics)
    assert "curves.json" not in paths and "plots unavailable" in paths["report.html"].read_text()


def test_empty_evaluation_renders(tmp_path, make_evaluation):
    metrics, curves = make_evaluation(0.05, rows=0)
    html = write_report(tmp_path, metrics, curves)["report.html"].read_text()
    assert "no rows with positive weight" in html and "undefined: no rows" in html


def test_run_report_from_saved_files_uses_the_latest_steps(run_dir, tmp_path):
    run = load_run(run_dir)
    assert {(e.dataset, e.step) for e in run.evaluations} == {("test", 200), ("valid", 200)}
    assert "loss/fav" in run.training_scalars
    paths = write_run_report(tmp_path / "report", run)
    summary = json.loads(paths["report.json"].read_text())
    assert set(summary["datasets"]) == {"test", "valid"}
    html = paths["report.html"].read_text()
    _assert_self_contained(html)
    assert "Dataset test — step 200" in html and "Dataset valid — step 200" in html
    # Training curves: loss (2 series), throughput, and per-metric charts of the eval scalars.
    assert 'aria-label="loss"' in html and 'aria-label="eval/test: auc"' in html
    assert len(_svgs(html)) > 8 * len(TASKS)

