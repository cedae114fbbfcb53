"""Processes as /proc shows them, for the tests of processes that must end with their parent."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    # The fields after the command name (which may hold spaces and parentheses).
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(entry.name)[1]) == pid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False
