"""The plain-text table of a `recap benchmark baselines` document: per data set and task, test AUC and RCE of ours,
the plain reference and the peer-style reference, ours minus peer, and the oracle where the data has one."""

from __future__ import annotations

from core.report.format import fixed_cell

MODELS = ("ours", "plain", "peer")


def format_table(doc: dict) -> str:
    """One block per data set, then how each model trained."""
    lines = [f"{'data set':<10}{'task':<16}{'pos rate':>9}" + "".join(f"{m + ' AUC':>11}" for m in MODELS)
             + f"{'ours-peer':>11}" + "".join(f"{m + ' RCE':>11}" for m in MODELS) + f"{'oracle AUC':>12}"]
    for name, dataset in doc["datasets"].items():
        for task, row in dataset["tasks"].items():
            cells = [fixed_cell(row["pos_rate"], 9, 4)]
            cells += [fixed_cell(row[m]["auc"], 11, 4) for m in MODELS]
            delta = row["ours_minus_peer_auc"]
            cells.append(f"{delta:+11.4f}" if delta is not None else f"{'-':>11}")
            cells += [fixed_cell(row[m]["rce"], 11, 2) for m in MODELS]
            cells.append(fixed_cell((row["oracle"] or {}).get("auc"), 12, 4))
            lines.append(f"{name:<10}{task:<16}" + "".join(cells))
    lines.append("")
    for name, dataset in doc["datasets"].items():
        ours, plain, peer = dataset["ours"], dataset["plain"], dataset["peer"]
        lines.append(f"{name}: ours {ours['epochs']} epochs ({ours['steps']} steps, {ours['seconds']:.0f} s, "
                     f"{dataset['config']}); plain {plain['epochs']} epochs; peer stopped after {peer['epochs']} "
                     f"epochs, best epoch {peer['best_epoch']} (references {peer['seconds']:.0f} s in all)")
    lines.append(f"{doc['seconds']:.0f} s in all")
    return "\n".join(lines)
