"""What the history-aware peers (history_din.py, history_gbdt.py) share: the generator's tasks and labels, and their
test figures per task and over the tasks with at least 1% positives, as docs/guides/history.md compares them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import binary_metrics

TASKS = ["is_favorited", "is_retweeted", "is_replied", "is_quoted", "is_good_clicked", "is_profile_clicked",
         "is_video_playback_50", "is_shared", "is_negative_feedback", "is_report_tweet_clicked"]
LABEL = "recap.engagement."


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)  # None: a metric the split cannot define (no positives)


def task_figures(task: str, probabilities: np.ndarray, labels: np.ndarray, oracle: np.ndarray,
                 note: str = "") -> dict[str, Any]:
    """One task's test AUC and RCE (core.metrics) beside the oracle's RCE, printed as a line and returned."""
    ours, best = binary_metrics(probabilities, labels), binary_metrics(oracle, labels)
    rate = float(labels.mean())
    print(f"{task:<26} pos {rate:.4f}  AUC {_f(ours['auc'], '.4f')}  RCE {_f(ours['rce'], '6.2f')}  "
          f"oracle {_f(best['rce'], '6.2f')}{note}", flush=True)
    return {"positive_rate": rate, "auc": ours["auc"], "rce": ours["rce"], "oracle_rce": best["rce"]}


def finish(out: dict[str, Any], what: str, output: Path | None) -> None:
    """Add the mean RCE and AUC over out["tasks"] with >= 1% positives, print them (with `what`: how long it
    trained), and write `out` as JSON to `output` when given."""
    frequent = [t for t, figures in out["tasks"].items() if figures["positive_rate"] >= 0.01]
    if frequent:
        out["mean_rce_frequent"] = float(np.mean([out["tasks"][t]["rce"] for t in frequent]))
        out["mean_auc_frequent"] = float(np.mean([out["tasks"][t]["auc"] for t in frequent]))
        print(f"mean over the {len(frequent)} tasks with >= 1% positives: RCE {out['mean_rce_frequent']:.2f}, "
              f"AUC {out['mean_auc_frequent']:.4f} ({what})")
    if output is not None:
        output.write_text(json.dumps(out, indent=1))
