"""The plain-text table of a `recap benchmark ids` document: per task, ours and the reference next to the oracle."""

from __future__ import annotations

from core.report.format import fixed_cell


def format_table(doc: dict) -> str:
    """One table per evaluated dataset (task, positive rate, AUC and RCE of ours, the reference and the oracle),
    then what each training took."""
    lines = []
    for dataset, tasks in doc["datasets"].items():
        lines.append(f"{dataset + ':':<26}{'':>9}{'ours':>18}{'reference':>18}{'oracle':>18}")
        lines.append(f"  {'task':<24}{'pos rate':>9}" + f"{'AUC':>9}{'RCE':>9}" * 3)
        for task, row in tasks.items():
            cells = [fixed_cell(row["pos_rate"], 9, 4)]
            for side in ("ours", "reference", "oracle"):
                cells += [fixed_cell(row[side].get("auc"), 9, 4), fixed_cell(row[side].get("rce"), 9, 2)]
            lines.append(f"  {task:<24}" + "".join(cells))
        lines.append("")
    for side in ("ours", "reference"):
        run = doc[side]
        lines.append(f"{side:<10} {run['steps']} steps, trained in {run['train_seconds']:.0f} s, evaluated in "
                     f"{run['eval_seconds']:.0f} s; outputs in {run['save_dir']}")
    embedding = doc["reference"]["embedding_optimizer"]
    sparse = doc["ours"]["sparse_optimizer"]
    lines.append(f"tables: ours {sparse['type']} at {sparse['learning_rate']:g}, reference torch.optim.Adam at "
                 f"{embedding['learning_rate']:g}; {doc['seconds']:.0f} s in all")
    return "\n".join(lines)
