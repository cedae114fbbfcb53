"""Fixtures of the benchmark tests."""

from __future__ import annotations

import logging
import sys

import pytest


@pytest.fixture
def progress_lines(monkeypatch, caplog):
    """The progress lines (core.progress) logged so far, with a line at every update (interval 0 s), no terminal
    and this process rank 0."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("RECAP_PROGRESS_SECONDS", "0")
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO)
    return lambda: [r.getMessage() for r in caplog.records if r.name == "core.progress"]
