"""core/cpu_allocator.py: glibc's thresholds raised once per process, unless the user chose otherwise."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
PROBE = "from core.cpu_allocator import keep_freed_memory as k; print(k(), k())"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "RECAP_KEEP_FREED_MEMORY"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_applied_once_per_process_on_glibc() -> None:
    assert _probe() == "True True"


@pytest.mark.parametrize("env", [{"RECAP_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"LD_PRELOAD": "libjemalloc.so.2"}])
def test_the_users_choice_wins(env: dict[str, str]) -> None:
    # The preloaded library need not exist: only the variable is read (the loader warns and goes on).
    assert _probe(**env) == "False False"
