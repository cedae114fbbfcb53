"""How metric values are shown in reports: labels, number formats, which direction is better, definitions."""

from __future__ import annotations

import math

__all__ = [
    "COMPARED_METRICS",
    "gates_table",
    "ranking_table",
    "cell_value",
    "column_label",
    "summary_columns",
    "DEFINITIONS",
    "LABELS",
    "direction",
    "format_delta",
    "format_value",
    "rce_share_of_oracle",
]

LABELS = {
    "rows": "rows",
    "count": "count (Σw)",
    "pos_rate": "pos rate",
    "auc": "AUC",
    "group_auc": "group AUC",
    "pr_auc": "PR-AUC",
    "rce": "RCE",
    "nrce": "NRCE",
    "logloss": "log loss",
    "calibration": "calibration",
}
# Metrics put side by side when two runs are compared.
COMPARED_METRICS = ("auc", "group_auc", "pr_auc", "rce", "nrce", "logloss", "calibration")
_HIGHER_IS_BETTER = {"auc", "group_auc", "pr_auc", "rce", "nrce"}
_DECIMALS = {"auc": 4, "group_auc": 4, "pr_auc": 4, "rce": 2, "nrce": 2, "logloss": 5, "calibration": 3}

DEFINITIONS = (
    ("count", "Σw, the weighted number of rows; rows is the number of rows used (finite, weight > 0)."),
    ("pos rate", "ȳ = Σw·y / Σw."),
    ("AUC", "probability that a positive scores above a negative, pairs weighted by w⁺·w⁻, ties count ½."),
    ("group AUC", "per-group AUCs averaged with weights Σw per group; single-class groups are skipped."),
    ("PR-AUC", "weighted average precision Σ (R_k − R_{k−1})·P_k over the distinct scores."),
    ("RCE", "100·(1 − logloss / CE of always predicting ȳ): % of the baseline cross-entropy removed."),
    ("NRCE", "RCE after rescaling predictions by ȳ / p̄ (mean label over mean prediction): ignores calibration."),
    ("log loss", "weighted binary cross-entropy."),
    ("calibration", "Σw·p / Σw·y: 1 is calibrated, above 1 over-predicts."),
    ("oracle", "the same metrics for the data's true probabilities (synthetic data): the best achievable."),
    ("NDCG@k", "per request, DCG@k of the order by score over the DCG@k of the ideal order, gain max(Σ_t w_t·y_t, 0) "
               "for the ranking score and y_t for a task alone; mean over requests with a positive gain."),
    ("request AUC", "the task's AUC within each request holding both classes, averaged with impression weights."),
    ("gate entropy", "of the mean gate weights (near 0: every row uses one expert, a collapse) and mean over rows "
                     "of each row's entropy; at most log K for K experts."),
)


def _number(value: float | None, decimals: int = 4) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def ranking_table(metrics: dict) -> tuple[list[str], list[list[str]], str] | None:
    """(header, rows, caption) of a metrics document's per-request ranking block; None without one."""
    ranking = metrics.get("ranking")
    if not ranking:
        return None
    ks = ranking["k"]
    header = ["ranked by", *(f"NDCG@{k}" for k in ks), *(f"requests@{k}" for k in ks), "request AUC", "requests"]
    rows = []
    entries = ([("score", ranking["score"])] if ranking.get("score") else []) + list(ranking["tasks"].items())
    for name, block in entries:
        rows.append([name, *(_number(block.get(f"ndcg@{k}")) for k in ks),
                     *(str(block.get(f"requests@{k}", 0)) for k in ks),
                     _number(block.get("request_auc")), str(block.get("request_auc_requests", "—"))])
    caption = (f"{ranking['requests']} requests by `{ranking.get('request_column')}`"
               + ("" if ranking.get("score") else "; no model.scoring weights, so no ranking-score row"))
    return header, rows, caption


def gates_table(metrics: dict) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a metrics document's gate statistics (expert mixtures); None without gates."""
    gates = metrics.get("gates")
    if not gates:
        return None
    header = ["gate", "entropy of mean", "mean entropy", "max (log K)", "mean weight per expert"]
    rows = [[name, _number(g.get("entropy_of_mean"), 3), _number(g.get("mean_entropy"), 3),
             _number(g.get("max_entropy"), 3),
             " ".join(f"{w:.2f}" for w in g.get("mean_weights") or [])]
            for name, g in gates.items()]
    return header, rows


def format_value(key: str, value: object) -> str:
    """A metric value as shown in a table; undefined values show as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if key == "rows":
        return f"{int(value):,}"
    if key == "count":
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    if key in _DECIMALS:
        return f"{value:.{_DECIMALS[key]}f}"
    return f"{value:.4g}"


def format_delta(key: str, delta: float | None) -> str:
    """A signed difference with the metric's decimals."""
    if delta is None:
        return "—"
    return f"{delta:+.{_DECIMALS.get(key, 4)}f}"


def direction(key: str, run: float | None, baseline: float | None) -> str | None:
    """'better', 'worse' or None (equal, undefined, or a metric with no better direction) for run vs baseline."""
    if run is None or baseline is None or run == baseline:
        return None
    if key in _HIGHER_IS_BETTER:
        return "better" if run > baseline else "worse"
    if key == "logloss":
        return "better" if run < baseline else "worse"
    if key == "calibration":
        gap_run, gap_base = abs(run - 1.0), abs(baseline - 1.0)
        return None if gap_run == gap_base else ("better" if gap_run < gap_base else "worse")
    return None


def fixed_cell(value: float | None, width: int, decimals: int) -> str:
    """A plain-text table cell: the value right-aligned in `width` characters, or '-' when it is undefined."""
    return f"{value:{width}.{decimals}f}" if value is not None else f"{'-':>{width}}"


def rce_share_of_oracle(block: dict) -> float | None:
    """Model RCE as a percentage of the oracle's RCE (None without a positive oracle RCE)."""
    oracle = block.get("oracle") or {}
    if block.get("rce") is None or not oracle.get("rce") or oracle["rce"] <= 0:
        return None
    return 100.0 * block["rce"] / oracle["rce"]


def summary_columns(metrics: dict) -> list[str]:
    """Columns of a metrics document's per-task table, without group AUC or oracle columns nobody computed."""
    blocks = metrics.get("tasks", {}).values()
    columns = ["rows", "count", "pos_rate", "auc"]
    if any("group_auc" in b for b in blocks):
        columns.append("group_auc")
    columns += ["pr_auc", "rce", "nrce", "logloss", "calibration"]
    if any("oracle" in b for b in blocks):
        columns += ["oracle_auc", "oracle_rce", "rce_of_oracle"]
    return columns


def column_label(key: str) -> str:
    """Header text of a summary column."""
    extra = {"oracle_auc": "oracle AUC", "oracle_rce": "oracle RCE", "rce_of_oracle": "RCE % of oracle"}
    return extra.get(key, LABELS.get(key, key))


def cell_value(block: dict, key: str) -> str:
    """A summary cell's text for one metric block."""
    if key == "oracle_auc":
        return format_value("auc", (block.get("oracle") or {}).get("auc"))
    if key == "oracle_rce":
        return format_value("rce", (block.get("oracle") or {}).get("rce"))
    if key == "rce_of_oracle":
        share = rce_share_of_oracle(block)
        return "—" if share is None else f"{share:.1f}%"
    return format_value(key, block.get(key))


def early_stopping_note(scalars: dict) -> str | None:
    """One sentence on model selection from a run's TensorBoard scalars (early_stopping/*), or None without it."""
    best = scalars.get("early_stopping/best_step")
    if not best:
        return None
    best_step = int(best[-1][1])
    value = dict(scalars.get("early_stopping/value", [])).get(best_step)
    note = f"Model selection: the best checkpoint is step {best_step}"
    note += f" (selected value {value:.6g})." if value is not None else "."
    stopped = scalars.get("early_stopping/stopped_at")
    if stopped:
        note += f" Training stopped early at step {int(stopped[-1][1])}."
    return note
