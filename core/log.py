"""Rank-aware logging: rank 0 prints everything, other ranks only warnings and errors, prefixed by rank."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _RankFilter(logging.Filter):
    """Lets everything through on rank 0; on other ranks only WARNING and above."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: int | str = logging.INFO, force: bool = False) -> None:
    """Configure the root logger once per process, reading RANK and WORLD_SIZE from the environment."""
    global _CONFIGURED
    if _CONFIGURED and not force:
        return
    rank, world = _rank_and_world()
    prefix = f"[rank {rank}] " if world > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RankFilter(rank))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_recap_handler", False):
            root.removeHandler(old)
    handler._recap_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    """A module logger; call setup_logging() once in the entry point."""
    return logging.getLogger(name)
