"""report.md and comparison.md: the same tables as the HTML page, as Markdown (plots stay in the HTML)."""

from __future__ import annotations

from collections.abc import Sequence

from core.report.compare import compared_metrics
from core.report.format import (
    DEFINITIONS,
    LABELS,
    cell_value,
    column_label,
    early_stopping_note,
    format_delta,
    format_value,
    gates_table,
    ranking_table,
    summary_columns,
)
from core.report.run_files import Evaluation, RunResults

__all__ = ["render_comparison_markdown", "render_run_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def _notes(items: Sequence[tuple[str, dict]]) -> list[str]:
    lines = [f"- {name}: {note}" for name, block in items for note in block.get("notes") or []]
    return (["Notes:", "", *lines, ""]) if lines else []


def _evaluation(evaluation: Evaluation) -> list[str]:
    m = evaluation.metrics
    step = "" if m.get("step") is None else f" — step {m['step']}"
    out = [f"## Dataset `{evaluation.dataset}`{step}", ""]
    if m.get("checkpoint"):
        out += [f"Checkpoint: `{m['checkpoint']}`", ""]
    tasks = m.get("tasks", {})
    if not tasks:
        return out + ["No task was evaluated.", ""]
    columns = summary_columns(m)
    out += _table(["task", *map(column_label, columns)],
                  [[task, *(cell_value(block, c) for c in columns)] for task, block in tasks.items()])
    out += _notes(list(tasks.items()))
    strata_columns = [c for c in columns if not c.startswith(("oracle", "rce_of"))]
    for task, block in tasks.items():
        for stratifier, values in (block.get("strata") or {}).items():
            out += [f"### `{task}` by `{stratifier}`", ""]
            out += _table([stratifier, *map(column_label, strata_columns)],
                          [[value, *(cell_value(sub, c) for c in strata_columns)] for value, sub in values.items()])
            out += _notes([(f"{stratifier}={value}", sub) for value, sub in values.items()])
    ranking = ranking_table(m)
    if ranking is not None:
        header, rows, caption = ranking
        out += ["### Ranking per request", "", caption, "", *_table(header, rows)]
    gates = gates_table(m)
    if gates is not None:
        out += ["### Expert gates", "", *_table(*gates)]
    return out


def _training(scalars: dict) -> list[str]:
    out = ["## Training curves (last values)", ""]
    if not scalars:
        return out + ["No TensorBoard scalars found.", ""]
    note = early_stopping_note(scalars)
    if note is not None:
        out += [note, ""]
    rows = []
    for tag, points in sorted(scalars.items()):
        if not points:
            continue
        values = [v for _, v in points]
        rows.append([tag, str(points[-1][0]), f"{points[-1][1]:.6g}", f"{min(values):.6g}", f"{max(values):.6g}"])
    return out + _table(["tag", "last step", "last value", "min", "max"], rows)


def _definitions() -> list[str]:
    return ["## Definitions", "", *(f"- **{k}**: {v}" for k, v in DEFINITIONS),
            "- **—**: undefined for this data (see the notes), e.g. AUC of a task with a single class.", ""]


def render_run_markdown(run: RunResults, title: str | None = None) -> str:
    """The Markdown report of one run (tables only; plots are in report.html)."""
    out = [f"# {title or f'Evaluation report — {run.name}'}", ""]
    if run.path is not None:
        out += [f"Run: `{run.path}`. Plots (ROC, precision-recall, reliability, score histograms, training curves) "
                "are in report.html.", ""]
    for evaluation in run.evaluations:
        out += _evaluation(evaluation)
    out += _training(run.training_scalars)
    out += _definitions()
    return "\n".join(out)


def render_comparison_markdown(run: RunResults, baseline: RunResults, comparison: dict,
                               title: str | None = None) -> str:
    """Two runs side by side as Markdown tables: run, baseline and Δ = run − baseline per metric."""
    out = [f"# {title or f'Comparison — {run.name} vs {baseline.name}'}", "",
           f"Run `{run.path or run.name}` vs baseline `{baseline.path or baseline.name}`. "
           "Δ = run − baseline; (+) marks the better run on that metric, (−) the worse.", ""]
    ours, theirs = run.by_dataset(), baseline.by_dataset()
    marks = {"better": " (+)", "worse": " (−)", None: ""}
    for name, entry in comparison["datasets"].items():
        out += [f"## Dataset `{name}` — step {entry['run_step']} vs step {entry['baseline_step']}", ""]
        keys = compared_metrics(ours[name].metrics, theirs[name].metrics)
        header = ["task"] + [f"{LABELS[k]} {side}" for k in keys for side in ("run", "baseline", "Δ")]
        rows = []
        for task, metrics in entry["tasks"].items():
            row = [task]
            for k in keys:
                e = metrics[k]
                row += [format_value(k, e["run"]), format_value(k, e["baseline"]),
                        format_delta(k, e["delta"]) + marks[e["direction"]]]
            rows.append(row)
        out += _table(header, rows)
        for side, missing in (("run", entry["only_in_run"]), ("baseline", entry["only_in_baseline"])):
            if missing:
                out += [f"Tasks only in the {side}: {', '.join(missing)}.", ""]
    for side, missing in (("run", comparison["only_in_run"]), ("baseline", comparison["only_in_baseline"])):
        if missing:
            out += [f"Datasets only in the {side}: {', '.join(missing)}.", ""]
    out += _definitions()
    return "\n".join(out)
