"""Test-only, on PYTHONPATH of a `recap train` a test launches: with RECAP_TEST_PAUSE_STEP=N, the rank named by
RECAP_TEST_PAUSE_RANK (default 0) writes "N PID" to RECAP_TEST_PAUSE_MARKER after step N and waits there until a stop
signal has reached it. The other ranks wait in the step's stop-flag all-reduce, so whoever the test signals (the
launcher, the process group, this rank), the run stops at step N exactly and its checkpoint is comparable.

The patch is applied when core.train_loop is first imported (a meta path finder), so processes that never train (the
launcher) import nothing extra."""

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path


def _patch(module) -> None:
    step, rank = int(os.environ["RECAP_TEST_PAUSE_STEP"]), int(os.environ.get("RECAP_TEST_PAUSE_RANK", "0"))
    marker = Path(os.environ["RECAP_TEST_PAUSE_MARKER"])
    original = module.TrainLoop._stop_if_signalled

    def pause_then_check(self, requested, writer, progress):
        if self.step == step and self.ctx.rank == rank:
            marker.write_text(f"{step} {os.getpid()}\n")
            while not requested:  # the signal handler fills it
                time.sleep(0.02)
        return original(self, requested, writer, progress)

    module.TrainLoop._stop_if_signalled = pause_then_check


class _PatchTrainLoop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "core.train_loop":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("RECAP_TEST_PAUSE_STEP"):
    sys.meta_path.insert(0, _PatchTrainLoop())
