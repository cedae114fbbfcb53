"""Runs the `recap` command line like `torchrun -m projects.home.recap.main` does, except that on the first attempt
(TORCHELASTIC_RESTART_COUNT 0) rank 1 dies abruptly right after update RECAP_TEST_CRASH_STEP, leaving marker file
RECAP_TEST_CRASH_MARKER. Used by test_train.py to check that a `torchrun --max-restarts 1` run finishes from the
last checkpoint.

Usage: torchrun --max-restarts 1 --nproc-per-node 2 train_crash_worker.py train --config FILE [--set ...]
"""

import os
from pathlib import Path

from core.log import setup_logging

setup_logging()  # before torchrec is imported: its import would otherwise install a second root handler

import core.train_loop as train_loop  # noqa: E402
from core.process_exit import run_and_end  # noqa: E402
from projects.home.recap.main import main  # noqa: E402

CRASH_STEP = int(os.environ["RECAP_TEST_CRASH_STEP"])
MARKER = Path(os.environ["RECAP_TEST_CRASH_MARKER"])
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

_train_step = train_loop.TrainLoop._train_step


def _train_step_then_maybe_die(self, data):
    stepped = _train_step(self, data)
    if FIRST_ATTEMPT and self.ctx.rank == 1 and self.step == CRASH_STEP:
        MARKER.write_text(f"rank 1 killed after step {self.step}\n")
        os._exit(17)  # no cleanup, no exception: like a lost machine
    return stepped


train_loop.TrainLoop._train_step = _train_step_then_maybe_die

if __name__ == "__main__":
    run_and_end(main)
