"""Where evaluation outputs live in a run directory, and reading/writing them.

Layout: SAVE_DIR/eval/<dataset>/step_<N>/{metrics.json, curves.json, report.html, report.md}. JSON is written to a
temporary file and renamed, so a reader never sees half a file; NaN and infinity are refused (null is used instead).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.object_path import ObjectPath
from core.storage import location

__all__ = [
    "CURVES_FILE",
    "EVAL_DIR",
    "METRICS_FILE",
    "Evaluation",
    "ReportError",
    "RunResults",
    "eval_step_dir",
    "list_steps",
    "load_evaluation",
    "load_run",
    "read_json",
    "write_json",
]

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.json"
_STEP_DIR = re.compile(r"step_(\d+)")


class ReportError(ValueError):
    """Evaluation outputs are missing or unreadable; the message names the path."""


@dataclass
class Evaluation:
    """One dataset evaluated at one step: the metrics.json and curves.json documents."""

    metrics: dict
    curves: dict | None = None
    path: Path | None = None

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or "dataset")

    @property
    def step(self) -> int | None:
        return self.metrics.get("step")


@dataclass
class RunResults:
    """What a report shows about one run: its evaluations (one per dataset) and its TensorBoard scalars."""

    name: str
    path: Path | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    training_scalars: dict = field(default_factory=dict)

    def by_dataset(self) -> dict[str, Evaluation]:
        return {e.dataset: e for e in self.evaluations}


def eval_step_dir(save_dir: str | os.PathLike | ObjectPath, dataset: str, step: int) -> Path | ObjectPath:
    """SAVE_DIR/eval/<dataset>/step_<step>: where one evaluation's outputs go (a directory, or a prefix when
    save_dir is on an object store)."""
    return location(save_dir) / EVAL_DIR / dataset / f"step_{int(step)}"


def write_json(path: str | os.PathLike, document: dict, indent: int | None = 1) -> Path:
    """Write JSON atomically (temporary file, then rename); NaN or infinity is an error, not invalid JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(document, indent=indent, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{path}: refusing to write a non-finite number ({exc}); use null") from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, naming the file in any error."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(document, dict) or "tasks" not in document:
        raise ReportError(f"{path}: not an evaluation document (no 'tasks' key)")
    return document


def list_steps(run_dir: str | os.PathLike) -> dict[str, dict[int, Path]]:
    """{dataset: {step: step directory}} for every step directory under RUN_DIR/eval holding a metrics.json."""
    root = Path(run_dir) / EVAL_DIR
    found: dict[str, dict[int, Path]] = {}
    if not root.is_dir():
        return found
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for step_dir in dataset_dir.iterdir():
            match = _STEP_DIR.fullmatch(step_dir.name)
            if match and (step_dir / METRICS_FILE).is_file():
                found.setdefault(dataset_dir.name, {})[int(match.group(1))] = step_dir
    return found


def load_evaluation(step_dir: str | os.PathLike) -> Evaluation:
    """metrics.json (required) and curves.json (optional) of one step directory."""
    step_dir = Path(step_dir)
    metrics = read_json(step_dir / METRICS_FILE)
    curves = read_json(step_dir / CURVES_FILE) if (step_dir / CURVES_FILE).is_file() else None
    return Evaluation(metrics, curves, step_dir)


def load_run(run_dir: str | os.PathLike, step: int | None = None, read_scalars: bool = True) -> RunResults:
    """A run's evaluations at its latest step per dataset (or at `step`), and its TensorBoard scalars."""
    from core.report.tensorboard import read_training_scalars

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found")
    steps = list_steps(run_dir)
    if not steps:
        raise ReportError(f"{run_dir}: no evaluation found (expected {run_dir / EVAL_DIR}/<dataset>/step_<N>/"
                          f"{METRICS_FILE}; run `recap evaluate` first)")
    evaluations = []
    for dataset, by_step in steps.items():
        chosen = max(by_step) if step is None else step
        if chosen in by_step:
            evaluation = load_evaluation(by_step[chosen])
            # The directory names the dataset when the document does not.
            evaluation.metrics["dataset"] = evaluation.metrics.get("dataset") or dataset
            evaluations.append(evaluation)
    if not evaluations:
        available = sorted({s for by_step in steps.values() for s in by_step})
        raise ReportError(f"{run_dir}: no evaluation at step {step} (steps evaluated: {available})")
    scalars = read_training_scalars(run_dir) if read_scalars else {}
    return RunResults(run_dir.resolve().name, run_dir, evaluations, scalars)
