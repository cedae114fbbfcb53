"""Run under `torchrun --nproc_per_node 2` by test_metrics_accumulator.py: accumulate uneven shards, gather, dump JSON.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 metrics_torchrun_worker.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core.metrics_accumulator import MetricsAccumulator
from core.process_exit import run_and_end

TASKS = ["fav", "reply", "never"]
STRATIFIERS = ["client", "hour"]
SCORE_WEIGHTS = [1.0, 4.0, -2.0]


def make_data(rows: int = 203, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic rows with ties, weights, two stratifiers, group ids, request ids, an oracle and a single-class
    task."""
    rng = np.random.default_rng(seed)
    oracle = rng.uniform(0.05, 0.6, (rows, 3)).astype(np.float32)
    labels = (rng.uniform(size=(rows, 3)) < oracle).astype(np.float32)
    labels[:, 2] = 0.0
    preds = np.round(np.clip(oracle + rng.normal(0, 0.15, (rows, 3)), 0.0, 1.0), 2).astype(np.float32)
    return {
        "predictions": preds,
        "labels": labels,
        "weights": rng.choice([1.0, 2.0, 5.0], (rows, 3)).astype(np.float32),
        "stratifiers": rng.integers(0, 3, (rows, 2)).astype(np.int64),
        "group_ids": rng.integers(0, 20, rows).astype(np.int64),
        # Requests of 7 consecutive rows: the uneven split at row 150 cuts request 21 across the two ranks.
        "request_ids": (np.arange(rows) // 7 * 1000 + 3).astype(np.int64),
        "oracle": oracle,
    }


def feed(acc: MetricsAccumulator, data: dict[str, np.ndarray], start: int, stop: int, batch: int) -> None:
    for i in range(start, stop, batch):
        j = min(i + batch, stop)
        acc.update(**{k: torch.from_numpy(v[i:j]) for k, v in data.items()})


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = make_data()
    if rank == 0:
        np.savez(out / "data.npz", **data)

    # Uneven shards: rank 0 holds 150 rows in batches of 32, rank 1 the other 53 in batches of 7.
    uneven = MetricsAccumulator()
    feed(uneven, data, *((0, 150, 32) if rank == 0 else (150, 203, 7)))
    metrics = uneven.compute(TASKS, STRATIFIERS, dataset="valid", step=3, checkpoint="ckpt", ndcg_ks=(3, 5),
                             score_weights=SCORE_WEIGHTS, request_column="request_id")
    curves = uneven.curves(TASKS, num_points=20)
    if rank == 0:
        (out / "uneven_metrics.json").write_text(json.dumps(metrics, allow_nan=False))
        (out / "uneven_curves.json").write_text(json.dumps(curves, allow_nan=False))
    elif metrics is not None or curves is not None:
        raise SystemExit("only rank 0 should get results")

    # Rank 1 sees no batch at all; every rank computes.
    lopsided = MetricsAccumulator()
    if rank == 0:
        feed(lopsided, data, 0, 203, 64)
    metrics = lopsided.compute(TASKS, STRATIFIERS, all_ranks=True)
    (out / f"lopsided_rank{rank}.json").write_text(json.dumps(metrics, allow_nan=False))

    # No rank sees a row: flagged nulls, no crash.
    empty = MetricsAccumulator().compute(TASKS, STRATIFIERS)
    if rank == 0:
        (out / "empty.json").write_text(json.dumps(empty, allow_nan=False))
    dist.destroy_process_group()


if __name__ == "__main__":
    run_and_end(main, collectives_ran=True)
