"""Run under `torchrun --nproc-per-node 2` by test_train_loop.py: train the toy model for 6 steps on 2 ranks with a
collective evaluation whose ranks hold different numbers of batches, then write OUT_DIR/report.json from rank 0.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 train_loop_worker.py OUT_DIR
"""

import dataclasses
import json
import sys
from pathlib import Path

from core.log import setup_logging

setup_logging()  # before torchrec is imported: its import would otherwise install a second root handler

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import toy_training as toy  # noqa: E402

from core.distributed import init_distributed, lockstep, shutdown_distributed  # noqa: E402
from core.process_exit import run_and_end  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    ctx = init_distributed("cpu")
    eval_batches = [toy.make_batch(10_000 + i) for i in range(3 if ctx.rank == 0 else 1)]
    counts = {}

    def evaluate(step, template):
        total = real = 0
        model = loop.model
        pad = lambda b: dataclasses.replace(b, weights=torch.zeros_like(b.weights))  # noqa: E731
        for batch, is_real in lockstep(eval_batches, pad, ctx, template=template):
            model(batch)  # collective: the sharded table's input and output all-to-alls
            total += 1
            real += int(is_real)
        counts[step] = (total, real)
        return {"eval/toy/batches": float(real)}

    config = toy.training_config(out / "run", num_train_steps=6, eval_every_n=3)
    loop = toy.build_loop(ctx, config, evaluate=evaluate)
    result = loop.run()
    mine = torch.tensor(counts[6], dtype=torch.int64)
    gathered = [torch.zeros(2, dtype=torch.int64) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    if ctx.is_main:
        report = {"step": result.step, "eval_steps": {str(r): t.tolist() for r, t in enumerate(gathered)}}
        (out / "report.json").write_text(json.dumps(report))
    shutdown_distributed()


if __name__ == "__main__":
    run_and_end(main)
