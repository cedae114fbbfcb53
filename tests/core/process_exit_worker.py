"""Run under torchrun by test_process_exit.py: a few collectives, then the end of the program at once, the moment
at which gloo's worker threads still release the last collective's tensors. With `plain` the process ends with
sys.exit (and may abort in the interpreter's teardown); by default through core.process_exit.run_and_end.

Usage: python -m torch.distributed.run --standalone --nproc-per-node N process_exit_worker.py [plain]
"""

import sys

import torch
import torch.distributed as dist

from core.distributed import init_distributed
from core.process_exit import run_and_end


def main() -> int:
    ctx = init_distributed("cpu")
    for step in range(3):
        gathered = [torch.zeros(4) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, torch.full((4,), float(ctx.rank + step)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["plain"]:
        sys.exit(main())
    run_and_end(main)
