"""DataLoader worker processes belong to the training process that forked them: a stop signal meant for the run (a
launcher forwarding SIGTERM to a worker's process group, `kill -TERM -PGID`, Ctrl-C in a terminal) must not kill
them, or the trainer dies on "DataLoader worker ... is killed by signal" before it can checkpoint. The trainer stops
at a step boundary and then shuts its workers down itself.

torch installs a SIGTERM handler in each worker that exits quietly when the parent sends SIGTERM and otherwise dies
of it. Here every worker blocks SIGTERM and SIGINT and a thread takes them with sigwaitinfo, which names the sender:
the parent's (DataLoader's own shutdown, multiprocessing's at exit) ends the worker, anyone else's is ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from core.parent_watch import exit_with_parent

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT in this thread (they stay pending, none is lost) while DataLoader workers are forked:
    a worker inherits the block, so no stop signal reaches it before worker_init has set up its handling."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _take_stop_signals(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == parent:
            os._exit(0)  # the trainer shutting its workers down (as torch's own worker handler does)


def worker_init(worker_id: int = 0) -> None:
    """A DataLoader worker_init_fn: stop signals from anyone but the training process are ignored, the training
    process's SIGTERM ends the worker, and the worker exits at once if the training process dies."""
    parent = os.getppid()
    # Already blocked when forked under stop_signals_held; blocked again for loaders started elsewhere. Threads the
    # worker starts later inherit the block, so only the waiting thread ever takes these signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_take_stop_signals, args=(parent,), name="recap-loader-signals", daemon=True).start()
    exit_with_parent(worker_id)
