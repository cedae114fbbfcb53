"""Ending a process that ran collectives, without the abort that Python's teardown can cause there.

gloo runs each collective on a worker thread of its process group. The thread wakes the caller as soon as the
collective is done and only then releases its hold on the collective's tensors, which takes the GIL. If the caller
reaches the end of the program first, Python is already finalizing when the thread asks for the GIL; Python ends
such a thread with pthread_exit, whose unwinding through gloo's loop (declared not to throw) calls std::terminate:
the process dies with SIGABRT ("terminate called without an active exception") after it did everything right, and
a launcher reports the job as failed. Destroying the process group does not help while anything (the sharded model,
DDP) still holds the group: its threads outlive the call.

`end_process` therefore ends such a process the way the interpreter would up to that point (non-daemon threads
joined, atexit handlers run: log handlers flushed, loader worker processes stopped, temporary files removed) and
then leaves with os._exit, before the finalization in which the abort happens. Files must be closed explicitly
before it (they are: writers, checkpoints, reports); objects still alive are not finalized.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

_process_group_created = False


def note_process_group() -> None:
    """Record that this process created a process group (core.distributed.init_distributed calls it)."""
    global _process_group_created
    _process_group_created = True


def _process_group_exists() -> bool:
    distributed = sys.modules.get("torch.distributed")
    return distributed is not None and distributed.is_available() and distributed.is_initialized()


def end_process(status: int, collectives_ran: bool | None = None) -> NoReturn:
    """Exit with `status`. A process that created a process group (`collectives_ran`, by default: through
    init_distributed, or one exists now) skips the interpreter's finalization (see the module docstring); any other
    exits as sys.exit does."""
    if collectives_ran is None:
        collectives_ran = _process_group_created or _process_group_exists()
    if not collectives_ran:
        sys.exit(status)
    try:
        # What Py_FinalizeEx does before it starts finalizing: wait for non-daemon threads (and run the hooks that
        # stop thread pools), then the atexit handlers.
        shutdown_threads = getattr(threading, "_shutdown", None)
        if shutdown_threads is not None:
            shutdown_threads()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or gone (a pipe whose reader left)
                pass
        os._exit(status)


def exit_status(code: object) -> int:
    """The exit status Python gives SystemExit(code): 0 for None, the number for an int, else 1 (after printing
    the code to stderr, as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_and_end(entry: Callable[[], int | None], collectives_ran: bool | None = None) -> NoReturn:
    """Run a program's main function and end the process with its status through `end_process`: what
    `sys.exit(entry())` does, including the status and the traceback of an uncaught exception."""
    try:
        result = entry()
        status = 0 if result is None else int(result)
    except SystemExit as stop:
        status = exit_status(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        status = 130  # the shell's status for SIGINT
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports it, then the same exit status
        exc_type, exc, tb = sys.exc_info()
        sys.excepthook(exc_type, exc, tb)  # type: ignore[arg-type]
        status = 1
    end_process(status, collectives_ran)
