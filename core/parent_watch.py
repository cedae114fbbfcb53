"""Processes that end with their parent: a data-loading worker, or a training worker whose launcher was killed,
must not go on alone (an orphan keeps its memory, its cores and, for a trainer, writes into the run's save_dir).

A daemon thread polls the parent's pid (getppid changes when the parent dies and the process is re-parented); this
works whatever the start method and whichever thread created the process, unlike PR_SET_PDEATHSIG, which fires when
the creating thread ends.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

from core.log import get_logger

logger = get_logger(__name__)

POLL_SECONDS = 1.0


def watch_parent(on_orphaned: Callable[[], None], poll_seconds: float = POLL_SECONDS) -> threading.Thread:
    """Call `on_orphaned` (from a daemon thread) once this process's parent has died."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        on_orphaned()

    thread = threading.Thread(target=watch, name="recap-parent-watch", daemon=True)
    thread.start()
    return thread


def exit_with_parent(worker_id: int = 0) -> None:
    """A DataLoader worker_init_fn: the worker exits at once when its parent (the training process) dies."""
    watch_parent(lambda: os._exit(1))


def stop_with_parent(grace_seconds: float = 120.0) -> threading.Thread:
    """A training worker: when its launcher dies, SIGTERM itself (stop after the current step with a checkpoint, as
    on preemption), and exit outright if that has not ended the process within `grace_seconds`."""

    def orphaned() -> None:
        logger.error("the launcher (parent process) is gone: stopping this worker")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        logger.error("the worker did not stop within %.0f s of losing its launcher: exiting", grace_seconds)
        os._exit(128 + signal.SIGTERM)

    return watch_parent(orphaned)
