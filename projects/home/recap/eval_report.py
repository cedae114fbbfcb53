"""What an evaluation reports from its metrics documents: each dataset's report files (core.report), read with the
run's training scalars; the TensorBoard scalars; and the plain-text summary table the commands print."""

from __future__ import annotations

import tempfile
from pathlib import Path

from core.report import metrics_to_scalars, read_training_scalars, write_report
from core.report.format import fixed_cell
from core.storage import ObjectPath
from core.storage_ops import download_tree, staged_output
from core.train_loop import TENSORBOARD_DIR


def write_dataset_report(report_dir: Path | ObjectPath, metrics: dict, curves: dict | None, scalars: dict) -> None:
    """One dataset's report (metrics.json, curves.json, report.md, report.html) into report_dir, uploaded whole
    when it is on an object store."""
    with staged_output(report_dir) as local:
        write_report(local, metrics, curves, scalars)


def training_scalars(save_dir: Path | ObjectPath) -> dict:
    """The run's TensorBoard scalars for the reports; on an object store its event files are read from a local
    copy."""
    if not isinstance(save_dir, ObjectPath):
        return read_training_scalars(save_dir)
    with tempfile.TemporaryDirectory(prefix="recap-events-") as local:
        download_tree(save_dir / TENSORBOARD_DIR, Path(local) / TENSORBOARD_DIR)
        return read_training_scalars(local)


def eval_scalars(documents: dict[str, dict], task_names: list[str], loss_weights: list[float]) -> dict[str, float]:
    """TensorBoard scalars of metrics documents: eval/<dataset>/<task>/<metric> (and .../oracle/<metric>),
    and eval/<dataset>/loss, the loss-weighted sum of the tasks' log losses."""
    out: dict[str, float] = {}
    for name, metrics in documents.items():
        out.update(metrics_to_scalars(metrics))
        losses = [(w, metrics["tasks"].get(t, {}).get("logloss")) for t, w in zip(task_names, loss_weights)]
        if any(loss is not None for _, loss in losses):
            out[f"eval/{name}/loss"] = sum(w * loss for w, loss in losses if loss is not None)
    return out


def summary_lines(documents: dict[str, dict]) -> list[str]:
    """A short plain-text table per dataset: rows, AUC, RCE, calibration per task, and the oracle's RCE when the
    data has one."""
    lines = []
    for name, metrics in documents.items():
        with_oracle = any("oracle" in block for block in metrics["tasks"].values())
        header = f"{name} (step {metrics.get('step')}): {'task':<24}{'rows':>9}{'AUC':>8}{'RCE':>8}{'calib':>8}"
        lines.append(header + (f"{'oracle RCE':>12}" if with_oracle else ""))
        for task, block in metrics["tasks"].items():
            cells = [fixed_cell(block.get("auc"), 8, 4), fixed_cell(block.get("rce"), 8, 2),
                     fixed_cell(block.get("calibration"), 8, 3)]
            if with_oracle:
                cells.append(fixed_cell((block.get("oracle") or {}).get("rce"), 12, 2))
            lines.append(f"  {task:<24}{block.get('rows', 0):>9}" + "".join(cells))
        ranking = metrics.get("ranking")
        if ranking and ranking.get("score"):
            ndcg = "  ".join(f"NDCG@{k} {fixed_cell(ranking['score'].get(f'ndcg@{k}'), 0, 4).strip()}"
                             for k in ranking["k"])
            # NDCG is averaged over the requests with a positive gain only (the others have no ideal order): both
            # counts, so a reader does not take the average for one over every request.
            counts = [ranking["score"].get(f"requests@{k}", 0) for k in ranking["k"]]
            averaged = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
            lines.append(f"  ranking score over {ranking['requests']} requests (NDCG averaged over the {averaged} "
                         f"with a positive gain): {ndcg}")
        for gate, stats in (metrics.get("gates") or {}).items():
            lines.append(f"  gate {gate}: entropy of mean weights "
                         f"{fixed_cell(stats.get('entropy_of_mean'), 0, 3).strip()} of at most "
                         f"{stats['max_entropy']:.3f}")
    return lines
