"""Two runs side by side: per dataset and task, each metric of both runs and their difference.

comparison.json (schema_version 1)::

    {
      "schema_version": 1,
      "run": {"name": ..., "path": ...}, "baseline": {"name": ..., "path": ...},
      "datasets": {
        "<dataset>": {
          "run_step": int|null, "baseline_step": int|null,
          "tasks": {"<task>": {"<metric>": {"run": float|null, "baseline": float|null, "delta": float|null,
                                             "direction": "better"|"worse"|null}}},
          "only_in_run": [task, ...], "only_in_baseline": [task, ...]
        }
      },
      "only_in_run": [dataset, ...], "only_in_baseline": [dataset, ...]
    }

delta is run − baseline; direction says whether the run is better on that metric (higher AUC/RCE/NRCE/PR-AUC,
lower log loss, calibration closer to 1).
"""

from __future__ import annotations

from core.metrics import SCHEMA_VERSION
from core.report.format import COMPARED_METRICS, direction
from core.report.run_files import RunResults

__all__ = ["compare_runs", "compared_metrics"]


def compared_metrics(*metrics_documents: dict) -> list[str]:
    """COMPARED_METRICS present in any task of the documents (group AUC only when some run computed it)."""
    present = {key for doc in metrics_documents for block in doc.get("tasks", {}).values() for key in block}
    return [m for m in COMPARED_METRICS if m in present]


def compare_runs(run: RunResults, baseline: RunResults) -> dict:
    """The comparison.json document for two runs, matching datasets and tasks by name."""
    ours, theirs = run.by_dataset(), baseline.by_dataset()
    datasets = {}
    for name in [d for d in ours if d in theirs]:
        a, b = ours[name].metrics, theirs[name].metrics
        keys = compared_metrics(a, b) + ["pos_rate", "count"]
        tasks: dict[str, dict] = {}
        for task in [t for t in a["tasks"] if t in b["tasks"]]:
            tasks[task] = {}
            for key in keys:
                x, y = a["tasks"][task].get(key), b["tasks"][task].get(key)
                tasks[task][key] = {
                    "run": x,
                    "baseline": y,
                    "delta": None if x is None or y is None else x - y,
                    "direction": direction(key, x, y),
                }
        datasets[name] = {
            "run_step": ours[name].step,
            "baseline_step": theirs[name].step,
            "tasks": tasks,
            "only_in_run": [t for t in a["tasks"] if t not in b["tasks"]],
            "only_in_baseline": [t for t in b["tasks"] if t not in a["tasks"]],
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {"name": run.name, "path": None if run.path is None else str(run.path)},
        "baseline": {"name": baseline.name, "path": None if baseline.path is None else str(baseline.path)},
        "datasets": datasets,
        "only_in_run": [d for d in ours if d not in theirs],
        "only_in_baseline": [d for d in theirs if d not in ours],
    }
