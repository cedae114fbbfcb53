"""Evaluation reports: metrics.json / curves.json files, report.html (inline SVG, self-contained) and report.md,
TensorBoard curves in and metrics out, and the side-by-side comparison of two runs."""

from core.report.compare import compare_runs
from core.report.run_files import (
    CURVES_FILE,
    METRICS_FILE,
    Evaluation,
    ReportError,
    RunResults,
    eval_step_dir,
    list_steps,
    load_evaluation,
    load_run,
    read_json,
    write_json,
)
from core.report.tensorboard import metrics_to_scalars, read_training_scalars, write_metrics_to_tensorboard
from core.report.writer import write_comparison, write_report, write_run_report

__all__ = [
    "CURVES_FILE",
    "METRICS_FILE",
    "Evaluation",
    "ReportError",
    "RunResults",
    "compare_runs",
    "eval_step_dir",
    "list_steps",
    "load_evaluation",
    "load_run",
    "metrics_to_scalars",
    "read_json",
    "read_training_scalars",
    "write_comparison",
    "write_json",
    "write_metrics_to_tensorboard",
    "write_report",
    "write_run_report",
]
