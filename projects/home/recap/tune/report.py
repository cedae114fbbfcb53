"""What a search leaves in its directory: trials.json, trials.html, best.yaml, and the table `recap tune` prints."""

from __future__ import annotations

from html import escape
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import dump_yaml
from core.report import write_json
from core.report.html import html_page, plain_table
from projects.home.recap.schema import load_recap_config
from projects.home.recap.tune.space import SearchSpace, yaml_value
from projects.home.recap.tune.study import INTERRUPTED, Search

__all__ = ["BEST_FILE", "best_trial", "short_names", "trial_rows", "trials_table", "write_outputs"]

BEST_FILE = "best.yaml"
BEST_RUN_DIR = "best"

_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "queued"}


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key path's shortest tail that no other key path ends with (model.tasks.a.mlp_config.dropout -> a...)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        out[key] = tail
    return out


def _state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED):
        return "interrupted"
    return _STATES.get(trial.state, trial.state.name.lower())


def trial_rows(study: optuna.Study, space: SearchSpace) -> list[dict]:
    """One record per trial: number, state, value (and the step it was evaluated at), parameters as config
    values, the --set overrides, its save_dir and log, the reported evaluations and any error."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append({
            "number": trial.number,
            "state": _state(trial),
            "value": trial.value,
            "step": trial.user_attrs.get("step"),
            "params": {k: space.parameters[k].config_value(v) for k, v in trial.params.items()
                       if k in space.parameters},
            "overrides": trial.user_attrs.get("overrides", []),
            "save_dir": trial.user_attrs.get("save_dir"),
            "log": trial.user_attrs.get("log"),
            "evaluations": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
            "duration_s": None if duration is None else round(duration, 1),
            "retry_of": trial.user_attrs.get("retry_of"),
            "error": trial.user_attrs.get("error"),
        })
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None while no trial has completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def _cells(row: dict, names: dict[str, str]) -> list[str]:
    value = "" if row["value"] is None else f"{row['value']:.5f}"
    step = "" if row["step"] is None else str(row["step"])
    params = ", ".join(f"{names[k]}={_short(v)}" for k, v in row["params"].items())
    return [str(row["number"]), row["state"], value, step, params]


def _short(value: object) -> str:
    # Four significant digits are enough to tell trials apart; trials.json keeps the exact values.
    return f"{value:.4g}" if isinstance(value, float) else yaml_value(value)


_HEADER = ["trial", "state", "value", "step", "parameters"]


def trials_table(rows: list[dict], space: SearchSpace) -> str:
    """The trials as a fixed-width text table."""
    names = short_names(list(space.parameters))
    lines = [_HEADER] + [_cells(r, names) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def _metric_label(space: SearchSpace) -> str:
    m = space.metric
    return f"{m.name} of {m.task} on {m.dataset} ({m.at} evaluation, {space.resolved_direction})"


def _html(rows: list[dict], space: SearchSpace, best: FrozenTrial | None, tune_dir: Path) -> str:
    names = short_names(list(space.parameters))
    body = [f"<h1>recap tune: {escape(str(tune_dir))}</h1>",
            f'<p class="meta">metric: {escape(_metric_label(space))} · {len(rows)} trials</p>']
    if best is not None:
        body.append(f'<p>best: trial {best.number}, value {best.value:.5f} · <code>{escape(BEST_FILE)}</code></p>')
    body.append("<h2>Trials</h2>")
    body.append(plain_table(_HEADER, [_cells(r, names) for r in rows]))
    body.append("<h2>Search space</h2>")
    body.append(plain_table(["key path", "distribution"],
                            [[k, yaml_value(p.model_dump(exclude_none=True, exclude_defaults=True))]
                             for k, p in space.parameters.items()]
                            + [[k, f"fixed {yaml_value(v)}"] for k, v in space.fixed.items()]))
    errors = [r for r in rows if r["error"]]
    if errors:
        body.append("<h2>Failures</h2>")
        body += [f"<details><summary>trial {r['number']}</summary><pre>{escape(r['error'])}</pre></details>"
                 for r in errors]
    return html_page(f"recap tune {tune_dir}", body)


def _write_best(search: Search, best: FrozenTrial) -> Path:
    """The base config with the best trial's values, fully resolved, training into TUNE_DIR/best."""
    run_dir = search.tune_dir / BEST_RUN_DIR
    config = load_recap_config(search.base, search.overrides(best, run_dir))
    step = best.user_attrs.get("step")
    header = [f"# recap tune: trial {best.number} of {search.tune_dir}, {_metric_label(search.space)}: "
              f"{best.value:.5f}" + ("" if step is None else f" at step {step}"),
              f"# base {search.base} with:"] + [f"#   --set {o}" for o in search.overrides(best, run_dir)]
    path = search.tune_dir / BEST_FILE
    path.write_text("\n".join(header) + "\n" + dump_yaml(config))
    return path


def write_outputs(search: Search) -> list[dict]:
    """Write trials.json, trials.html and (once a trial completed) best.yaml; returns the trial rows."""
    rows = trial_rows(search.study, search.space)
    best = best_trial(search.study)
    write_json(search.tune_dir / "trials.json", {
        "metric": search.space.metric.model_dump(), "direction": search.space.resolved_direction,
        "base": str(search.base),
        "best": None if best is None else {"number": best.number, "value": best.value, "file": BEST_FILE},
        "trials": rows,
    })
    (search.tune_dir / "trials.html").write_text(_html(rows, search.space, best, search.tune_dir))
    if best is not None:
        _write_best(search, best)
    return rows
