"""Stopping training on a signal at a step boundary: while training runs, a cluster's preemption SIGTERM (or SIGINT)
is only recorded; after each step every rank learns whether any rank got one, and if so the loop checkpoints that
step and raises TrainingStopped, whose exit status is the shell's for the signal. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.distributed import DistributedContext
from core.log import get_logger

logger = get_logger(__name__)


class TrainingStopped(RuntimeError):
    """Training stopped on a signal (a cluster's preemption SIGTERM, or SIGINT) after every rank finished its step
    and a checkpoint of that step was written; a rerun with the same save_dir resumes from it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint
        # The shell's convention for a process ended by a signal: 128 + its number (SIGTERM 143, SIGINT 130).
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {self.signal_name} at step {step}; checkpoint {checkpoint}")


@contextlib.contextmanager
def stop_signals() -> Iterator[dict[str, int]]:
    """While active, SIGTERM and SIGINT only record themselves in the yielded dict ("signal": number), so training
    can stop at a step boundary; a second SIGINT interrupts at once. Main thread only (elsewhere: no handlers)."""
    requested: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and requested.get("signal") == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signum
        logger.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def signal_on_any_rank(requested: dict[str, int], ctx: DistributedContext,
                       group: dist.ProcessGroup | None = None) -> int:
    """The stop signal recorded on any rank (0 for none); collective over `group` when there is more than one rank,
    so every rank stops at the same step, whichever got the signal (a launcher forwards it to all of them)."""
    signum = requested.get("signal", 0)
    if ctx.world_size > 1:
        flag = torch.tensor([float(signum)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        signum = int(flag.item())
    return signum
