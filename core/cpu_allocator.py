"""Keep freed memory in the process on CPU training: glibc's malloc settings for a loop of same-sized tensors.

By default glibc serves each allocation above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a
fresh mmap, and gives the heap's free top back to the OS above its trim threshold. A training step allocates and
frees the same large tensors every step (activations, their gradients), so each step pays page faults (the kernel
zeroing new pages) for memory it has just returned: on the history model's step (items x 128 activations) this was
about a tenth of the step. Raising both thresholds keeps that memory in the process: the step reuses it as it is.
The resident memory then stays near the step's peak instead of shrinking between steps.

Applied once per process (processes forked after it, such as the DataLoader's workers on Linux, inherit the
settings with the rest of malloc's state), on Linux with glibc, unless the user chose an allocator (LD_PRELOAD of
jemalloc or tcmalloc) or set glibc's own MALLOC_*_ variables, which take precedence; RECAP_KEEP_FREED_MEMORY=0
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): larger allocations are mmapped whatever is set.
MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory at the heap's top kept before it is returned.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def _user_chose() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    glibc_vars = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
    return ("jemalloc" in preload or "tcmalloc" in preload or any(v in os.environ for v in glibc_vars)
            or os.environ.get("RECAP_KEEP_FREED_MEMORY", "1") == "0")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring); True when they are set
    (now or by an earlier call), False where this is not glibc or the user chose otherwise."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or _user_chose():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
