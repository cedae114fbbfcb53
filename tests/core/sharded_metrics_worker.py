"""Run under `torchrun --nproc_per_node W` by test_sharded_metrics.py: the same rows through the gather and the
sharded evaluation, results dumped as JSON by rank 0.

Usage: python -m torch.distributed.run --standalone --nproc_per_node W sharded_metrics_worker.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core.collective import Collective
from core.metrics_accumulator import MetricsAccumulator
from core.process_exit import run_and_end
from core.sharded_sort import score_keys, sort_blocks

TASKS = ["fav", "reply", "never"]
STRATIFIERS = ["client", "hour"]
SCORE_WEIGHTS = [1.0, 4.0, -2.0]
ROWS = 601
# Contiguous row ranges per rank: the cuts fall inside requests (7 rows each).
CUTS = {1: [0, ROWS], 2: [0, 380, ROWS], 3: [0, 200, 430, ROWS]}


def make_data(rows: int = ROWS, seed: int = 5) -> dict[str, np.ndarray]:
    """Rows with heavy ties (a quarter of them at exactly 0.5, the rest on a 0.01 grid), fractional weights and
    labels, zero weights, non-finite predictions, two stratifiers, group ids, request ids, an oracle and a task
    without positives."""
    rng = np.random.default_rng(seed)
    oracle = rng.uniform(0.05, 0.6, (rows, 3)).astype(np.float32)
    labels = (rng.uniform(size=(rows, 3)) < oracle).astype(np.float32)
    labels[rng.uniform(size=rows) < 0.05, 0] = 0.5
    labels[:, 2] = 0.0
    preds = np.round(np.clip(oracle + rng.normal(0, 0.15, (rows, 3)), 0.0, 1.0), 2).astype(np.float32)
    preds[rng.uniform(size=(rows, 3)) < 0.25] = 0.5
    preds[rng.integers(0, rows, 4), 1] = np.nan
    oracle[rng.uniform(size=(rows, 3)) < 0.1] = 0.25
    weights = rng.choice([0.0, 0.3, 1.0, 1.7, 5.0], (rows, 3), p=[0.05, 0.2, 0.4, 0.2, 0.15]).astype(np.float32)
    return {
        "predictions": preds,
        "labels": labels,
        "weights": weights,
        "stratifiers": rng.integers(0, 3, (rows, 2)).astype(np.int64),
        "group_ids": rng.integers(0, 40, rows).astype(np.int64) * 7919,
        "request_ids": (np.arange(rows) // 7 * 1000 + 3).astype(np.int64),
        "oracle": oracle,
    }


def feed(acc: MetricsAccumulator, data: dict[str, np.ndarray], start: int, stop: int, batch: int = 64) -> None:
    for i in range(start, stop, batch):
        j = min(i + batch, stop)
        acc.update(**{k: torch.from_numpy(v[i:j]) for k, v in data.items()})


def evaluate(method: str, data: dict, start: int, stop: int, all_ranks: bool = False) -> tuple:
    acc = MetricsAccumulator(method=method)
    feed(acc, data, start, stop)
    metrics = acc.compute(TASKS, STRATIFIERS, dataset="valid", step=3, ndcg_ks=(1, 3, 5),
                          score_weights=SCORE_WEIGHTS, request_column="request_id", all_ranks=all_ranks)
    curves = acc.curves(TASKS, num_points=25, all_ranks=all_ranks)
    return metrics, curves


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data()
    start, stop = CUTS[world][rank], CUTS[world][rank + 1]
    results = {method: evaluate(method, data, start, stop) for method in ("gather", "sharded")}
    # Only the last rank has rows; every rank gets the result.
    lonely = evaluate("sharded", data, *((0, ROWS) if rank == world - 1 else (0, 0)), all_ranks=True)
    nothing = evaluate("sharded", data, 0, 0)

    # The sort alone: every rank's tie blocks of one task's scores.
    comm = Collective()
    p = data["predictions"][start:stop, 0]
    keys, values = sort_blocks(comm, score_keys(p), np.ones((p.size, 1)))
    placement = comm.gather(np.c_[keys, values[:, 0].astype(np.int64)])

    # Out-of-range predictions: the same error on every rank.
    bad = MetricsAccumulator(method="sharded")
    broken = {k: v.copy() for k, v in data.items()}
    broken["predictions"][ROWS - 1, 1] = 1.5
    feed(bad, broken, start, stop)
    try:
        bad.compute(TASKS)
        error = None
    except ValueError as exc:
        error = str(exc)
    errors = [None] * world
    dist.all_gather_object(errors, error)

    if rank == 0:
        np.savez(out / "data.npz", **data)
        for method, (metrics, curves) in results.items():
            (out / f"{method}_metrics.json").write_text(json.dumps(metrics, allow_nan=False))
            (out / f"{method}_curves.json").write_text(json.dumps(curves, allow_nan=False))
        if results["sharded"][0] is None:
            raise SystemExit("rank 0 got no result")
        (out / "nothing.json").write_text(json.dumps(nothing[0], allow_nan=False))
        (out / "placement.json").write_text(json.dumps([part.tolist() for part in placement]))
        (out / "errors.json").write_text(json.dumps(errors))
    elif results["sharded"][0] is not None or results["sharded"][1] is not None:
        raise SystemExit("only rank 0 should get results")
    (out / f"lonely_rank{rank}.json").write_text(json.dumps(lonely[0], allow_nan=False))
    dist.destroy_process_group()


if __name__ == "__main__":
    run_and_end(main, collectives_ran=True)
