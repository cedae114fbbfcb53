"""Write evaluation outputs: one evaluation (JSON + report), a whole run's report, a comparison of two runs."""

from __future__ import annotations

import os
from pathlib import Path

from core.metrics import SCHEMA_VERSION
from core.metrics_curves import curves_document
from core.report.compare import compare_runs
from core.report.html import render_comparison_html, render_run_html
from core.report.markdown import render_comparison_markdown, render_run_markdown
from core.report.run_files import CURVES_FILE, METRICS_FILE, Evaluation, RunResults, write_json

__all__ = ["write_comparison", "write_report", "write_run_report"]


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict,
    curves: dict | None = None,
    training_scalars: dict | None = None,
    *,
    title: str | None = None,
) -> dict[str, Path]:
    """Write metrics.json, curves.json, report.html and report.md for one dataset at one step into out_dir.

    `curves` is a curves.json document or just its "tasks" mapping; `training_scalars` is what
    read_training_scalars returns. Returns the written paths by file name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if curves is not None and "schema_version" not in curves:
        curves = curves_document(curves, metrics)
    paths = {METRICS_FILE: write_json(out / METRICS_FILE, metrics)}
    if curves is not None:
        paths[CURVES_FILE] = write_json(out / CURVES_FILE, curves, indent=None)
    evaluation = Evaluation(metrics, curves, out)
    step = "" if metrics.get("step") is None else f", step {metrics['step']}"
    run = RunResults(evaluation.dataset, None, [evaluation], training_scalars or {})
    title = title or f"Evaluation report — {evaluation.dataset}{step}"
    paths["report.html"] = _write_text(out / "report.html", render_run_html(run, title))
    paths["report.md"] = _write_text(out / "report.md", render_run_markdown(run, title))
    return paths


def write_run_report(out_dir: str | os.PathLike, run: RunResults, title: str | None = None) -> dict[str, Path]:
    """Write report.html, report.md and report.json (every dataset's metrics) for a whole run into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "run": {"name": run.name, "path": None if run.path is None else str(run.path)},
        "datasets": {e.dataset: e.metrics for e in run.evaluations},
    }
    return {
        "report.json": write_json(out / "report.json", summary),
        "report.html": _write_text(out / "report.html", render_run_html(run, title)),
        "report.md": _write_text(out / "report.md", render_run_markdown(run, title)),
    }


def write_comparison(
    out_dir: str | os.PathLike, run: RunResults, baseline: RunResults, title: str | None = None
) -> dict[str, Path]:
    """Write comparison.html, comparison.md and comparison.json (deltas = run − baseline) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare_runs(run, baseline)
    return {
        "comparison.json": write_json(out / "comparison.json", comparison),
        "comparison.html": _write_text(out / "comparison.html",
                                       render_comparison_html(run, baseline, comparison, title)),
        "comparison.md": _write_text(out / "comparison.md",
                                     render_comparison_markdown(run, baseline, comparison, title)),
    }
