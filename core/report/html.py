"""report.html and comparison.html: one self-contained page (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

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
from core.report.plots import histogram_chart, pr_chart, reliability_chart, roc_chart, training_charts
from core.report.run_files import Evaluation, RunResults

__all__ = ["html_page", "plain_table", "render_comparison_html", "render_run_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
td.notes { text-align: left; color: #8a5a00; max-width: 420px; }
.meta { color: #555; font-size: 13px; }
.figures { display: flex; flex-wrap: wrap; gap: 10px; }
details { margin: 6px 0 14px; } summary { cursor: pointer; font-weight: 600; }
.better { color: #187a1f; } .worse { color: #b3261e; }
svg.chart { background: #fff; border: 1px solid #eee; }
svg .grid { stroke: #eee; } svg .tick { font-size: 10px; fill: #555; } svg .label { font-size: 11px; fill: #333; }
svg .legend { font-size: 10px; fill: #222; } svg .chart-title { font-size: 12px; font-weight: 600; }
"""


def html_page(title: str, body: list[str]) -> str:
    """A self-contained page (the reports' inline style) of HTML fragments."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _metrics_table(rows: Sequence[tuple[str, dict]], columns: list[str], first: str) -> str:
    head = f'<tr><th class="name">{escape(first)}</th>' + "".join(
        f"<th>{escape(column_label(c))}</th>" for c in columns) + "<th>notes</th></tr>"
    body = []
    for name, block in rows:
        cells = "".join(f"<td>{escape(cell_value(block, c))}</td>" for c in columns)
        notes = "; ".join(block.get("notes") or [])
        body.append(f'<tr><td class="name">{escape(name)}</td>{cells}<td class="notes">{escape(notes)}</td></tr>')
    return "<table>" + head + "".join(body) + "</table>"


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of text cells (escaped here), the first column left-aligned as a name."""
    head = f'<tr><th class="name">{escape(header[0])}</th>' + "".join(f"<th>{escape(h)}</th>" for h in header[1:])
    body = "".join(f'<tr><td class="name">{escape(row[0])}</td>' + "".join(f"<td>{escape(c)}</td>" for c in row[1:])
                   + "</tr>" for row in rows)
    return "<table>" + head + "</tr>" + body + "</table>"


def _evaluation_section(evaluation: Evaluation, anchor: str) -> list[str]:
    m = evaluation.metrics
    step = "" if m.get("step") is None else f" — step {m['step']}"
    out = [f'<h2 id="{escape(anchor)}">Dataset {escape(evaluation.dataset)}{escape(step)}</h2>']
    meta = []
    if m.get("checkpoint"):
        meta.append(f"checkpoint <code>{escape(str(m['checkpoint']))}</code>")
    if m.get("stratifiers"):
        meta.append("stratifiers " + ", ".join(escape(s) for s in m["stratifiers"]))
    if evaluation.path is not None:
        meta.append(f"files <code>{escape(str(evaluation.path))}</code>")
    if meta:
        out.append(f'<p class="meta">{" · ".join(meta)}</p>')
    tasks = m.get("tasks", {})
    if not tasks:
        out.append("<p>No task was evaluated.</p>")
        return out
    columns = summary_columns(m)
    out.append(_metrics_table(list(tasks.items()), columns, "task"))
    curves = (evaluation.curves or {}).get("tasks", {})
    strata_columns = [c for c in columns if not c.startswith(("oracle", "rce_of"))]
    for task, block in tasks.items():
        c = curves.get(task)
        auc = format_value("auc", block.get("auc"))
        rce = format_value("rce", block.get("rce"))
        out.append(f"<details open><summary>{escape(task)} — AUC {auc}, RCE {rce}</summary>")
        if c is not None:
            oracle = c.get("oracle") or {}
            out.append('<div class="figures">' + "".join([
                roc_chart([("model", c.get("roc"), False), ("oracle", oracle.get("roc"), True)],
                          f"ROC — {task}"),
                pr_chart([("model", c.get("pr"), False), ("oracle", oracle.get("pr"), True)],
                         f"Precision-recall — {task}"),
                reliability_chart([("model", c.get("reliability"), False)], f"Reliability — {task}"),
                histogram_chart(c.get("histogram"), f"Scores — {task}"),
            ]) + "</div>")
        else:
            out.append('<p class="meta">No curves.json: plots unavailable.</p>')
        for stratifier, values in (block.get("strata") or {}).items():
            out.append(f"<p><b>{escape(task)} by {escape(stratifier)}</b></p>")
            out.append(_metrics_table(list(values.items()), strata_columns, stratifier))
        out.append("</details>")
    ranking = ranking_table(m)
    if ranking is not None:
        header, rows, caption = ranking
        out += ["<h3>Ranking per request</h3>", f'<p class="meta">{escape(caption)}</p>', plain_table(header, rows)]
    gates = gates_table(m)
    if gates is not None:
        out += ["<h3>Expert gates</h3>", plain_table(*gates)]
    return out


def _training_section(runs: Sequence[tuple[str, dict, bool]], source: str) -> list[str]:
    out = ['<h2 id="training">Training curves</h2>']
    if not any(scalars for _, scalars, _ in runs):
        out.append(f"<p>No TensorBoard scalars found under {escape(source)}.</p>")
        return out
    for label, scalars, _ in runs:
        note = early_stopping_note(scalars)
        if note is not None:
            out.append(f"<p>{escape(note if len(runs) == 1 else f'{label}: {note}')}</p>")
    charts, omitted = training_charts(runs)
    out.append('<div class="figures">' + "".join(charts) + "</div>")
    if omitted:
        out.append(f'<p class="meta">Not drawn (chart limit): {escape(", ".join(omitted))}.</p>')
    return out


def _definitions() -> list[str]:
    items = "".join(f"<dt><b>{escape(k)}</b></dt><dd>{escape(v)}</dd>" for k, v in DEFINITIONS)
    return ['<h2 id="definitions">Definitions</h2>', f"<dl>{items}</dl>",
            '<p class="meta">Undefined values (—) come with a note: e.g. AUC of a task with a single class.</p>']


def render_run_html(run: RunResults, title: str | None = None) -> str:
    """The report page of one run: per dataset a task table, per task its plots and strata; training curves."""
    title = title or f"Evaluation report — {run.name}"
    anchors = [f"dataset-{i}" for i in range(len(run.evaluations))]
    contents = " · ".join(f'<a href="#{a}">{escape(e.dataset)}</a>' for a, e in zip(anchors, run.evaluations))
    body = [f"<h1>{escape(title)}</h1>"]
    if run.path is not None:
        body.append(f'<p class="meta">run <code>{escape(str(run.path))}</code></p>')
    body.append(f'<p class="meta">{contents} · <a href="#training">training curves</a> · '
                '<a href="#definitions">definitions</a></p>')
    for anchor, evaluation in zip(anchors, run.evaluations):
        body += _evaluation_section(evaluation, anchor)
    body += _training_section([(run.name, run.training_scalars, False)], str(run.path or "the run"))
    body += _definitions()
    return html_page(title, body)


def _delta_cell(entry: dict, key: str) -> str:
    css = f' class="{entry["direction"]}"' if entry.get("direction") else ""
    return f"<td{css}>{escape(format_delta(key, entry.get('delta')))}</td>"


def render_comparison_html(run: RunResults, baseline: RunResults, comparison: dict, title: str | None = None) -> str:
    """Two runs side by side: per dataset and task each metric, its delta (run − baseline) and overlaid curves."""
    title = title or f"Comparison — {run.name} vs {baseline.name}"
    # Legend names: the run directories' names, unless they are the same.
    ours_label, theirs_label = (run.name, baseline.name) if run.name != baseline.name else ("run", "baseline")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="meta">run <code>{escape(str(run.path or run.name))}</code> vs baseline '
            f'<code>{escape(str(baseline.path or baseline.name))}</code>; Δ = run − baseline, '
            '<span class="better">green</span> is better, <span class="worse">red</span> worse.</p>']
    ours, theirs = run.by_dataset(), baseline.by_dataset()
    for name, entry in comparison["datasets"].items():
        body.append(f"<h2>Dataset {escape(name)} — step {entry['run_step']} vs step {entry['baseline_step']}</h2>")
        keys = compared_metrics(ours[name].metrics, theirs[name].metrics)
        head1 = '<tr><th class="name" rowspan="2">task</th>' + "".join(
            f'<th colspan="3">{escape(LABELS[k])}</th>' for k in keys) + "</tr>"
        head2 = "<tr>" + "<th>run</th><th>baseline</th><th>Δ</th>" * len(keys) + "</tr>"
        rows = []
        for task, metrics in entry["tasks"].items():
            cells = "".join(
                f"<td>{escape(format_value(k, metrics[k]['run']))}</td>"
                f"<td>{escape(format_value(k, metrics[k]['baseline']))}</td>{_delta_cell(metrics[k], k)}"
                for k in keys)
            rows.append(f'<tr><td class="name">{escape(task)}</td>{cells}</tr>')
        body.append("<table>" + head1 + head2 + "".join(rows) + "</table>")
        for side, missing in (("run", entry["only_in_run"]), ("baseline", entry["only_in_baseline"])):
            if missing:
                body.append(f'<p class="meta">Only in the {side}: {escape(", ".join(missing))}.</p>')
        run_curves = (ours[name].curves or {}).get("tasks", {})
        base_curves = (theirs[name].curves or {}).get("tasks", {})
        for task in entry["tasks"]:
            a, b = run_curves.get(task) or {}, base_curves.get(task) or {}
            if not a and not b:
                continue
            body.append(f"<details open><summary>{escape(task)}</summary><div class=\"figures\">" + "".join([
                roc_chart([(ours_label, a.get("roc"), False), (theirs_label, b.get("roc"), True)],
                          f"ROC — {task}"),
                pr_chart([(ours_label, a.get("pr"), False), (theirs_label, b.get("pr"), True)],
                         f"Precision-recall — {task}"),
                reliability_chart([(ours_label, a.get("reliability"), False),
                                   (theirs_label, b.get("reliability"), True)], f"Reliability — {task}"),
            ]) + "</div></details>")
    for side, missing in (("run", comparison["only_in_run"]), ("baseline", comparison["only_in_baseline"])):
        if missing:
            body.append(f'<p class="meta">Datasets only in the {side}: {escape(", ".join(missing))}.</p>')
    body += _training_section([(ours_label, run.training_scalars, False),
                               (theirs_label, baseline.training_scalars, True)], "either run")
    body += _definitions()
    return html_page(title, body)
