"""One task's block of metrics.json (see core/metrics.py for the metrics and the schema), completed alike by the
gather path (core/metrics.py binary_metrics) and the sharded one (core/sharded_metrics.py), so their blocks read the
same: the values derived from the log losses (rce, nrce), group_auc, and the notes that say which metrics are
undefined for the data and why. No NaN or infinity is ever returned: a non-finite value becomes None with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["baseline_entropy", "finish_block", "no_rows_block"]


def baseline_entropy(mean_label: float) -> float | None:
    """CE_baseline, the log loss of always predicting the mean label; None when it is 0 or 1 (rce is undefined)."""
    if not 0.0 < mean_label < 1.0:
        return None
    return -(mean_label * math.log(mean_label) + (1.0 - mean_label) * math.log1p(-mean_label))


def no_rows_block(out: dict[str, Any], notes: list[str], grouped: bool) -> dict:
    """A metrics block without a row of positive weight: every metric undefined, and the note that says so (grouped:
    with group_auc)."""
    notes.append("no rows with positive weight: every metric is undefined")
    if grouped:
        out["group_auc"], out["group_auc_groups"] = None, 0
    out["notes"] = notes
    return out


def finish_block(
    out: dict[str, Any],
    notes: list[str],
    positives: float,
    total: float,
    mean_prediction: float,
    normalized_logloss: Callable[[], float],
    group: tuple[float | None, int] | None,
) -> dict:
    """Complete a block whose count, rows, pos_rate, logloss, calibration, auc and pr_auc are set: rce, nrce (from
    normalized_logloss, the log loss of the predictions rescaled by mean label / mean prediction, asked for only
    where nrce is defined), group_auc (group: its value and the groups counted; None without group ids), and the
    notes that say which metrics are undefined and why; a non-finite value becomes None with a note."""
    baseline = baseline_entropy(positives / total)
    if baseline is not None:
        out["rce"] = 100.0 * (1.0 - out["logloss"] / baseline)
        if mean_prediction > 0:
            out["nrce"] = 100.0 * (1.0 - normalized_logloss() / baseline)
        else:
            notes.append("every prediction is 0: nrce is undefined")
    if positives <= 0:
        notes.append("no positive labels: auc, rce, nrce, pr_auc and calibration are undefined")
    elif positives >= total:
        notes.append("no negative labels: auc, rce and nrce are undefined")
    if group is not None:
        out["group_auc"], out["group_auc_groups"] = group
        if out["group_auc"] is None:
            notes.append("no group holds both classes: group_auc is undefined")
    out["notes"] = notes
    return _finite(out)


def _finite(block: dict) -> dict:
    """Each non-finite float of the block as None, with a note."""
    for key, value in block.items():
        if isinstance(value, float) and not math.isfinite(value):
            block[key] = None
            block["notes"].append(f"{key} was not finite and is reported as null")
    return block
