"""Progress of a long pass over rows, for every long command:

    with Progress("evaluate test", total=rows, enabled=ctx.is_main) as progress:
        for batch in batches:
            ...
            progress.update(batch.batch_size)

On a terminal (stderr is a TTY) it is a tqdm bar with rows/s and, when the total is known, the ETA; otherwise (a
log file, CI) one INFO line every RECAP_PROGRESS_SECONDS seconds (default 30) with the rows done, rows/s and ETA.
Disabled (other ranks) it does nothing. Rows are counted on the host from sizes the caller already has, so a loop
gains no device synchronization.

The training loop's steps have a bar of their own on a terminal (`step_bar`), which the loop's log lines print above.

A command whose slow steps have no rows to count (loading a checkpoint, tracing, saving) reports its phases:

    with Phases("export", total=3) as phases:
        with phases.phase("loading the checkpoint"):
            ...

On a terminal a tqdm bar over the phases, named by the running one; otherwise an INFO line when each phase starts
and one with its seconds when it ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from core.log import get_logger

__all__ = ["DEFAULT_SECONDS", "ENV_SECONDS", "Phases", "Progress", "progress_seconds", "step_bar"]

logger = get_logger(__name__)

ENV_SECONDS = "RECAP_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def progress_seconds() -> float:
    """The seconds between progress log lines: RECAP_PROGRESS_SECONDS, else 30."""
    text = os.environ.get(ENV_SECONDS)
    if text is None or not text.strip():
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise ValueError(f"{ENV_SECONDS}={text!r}: expected a number of seconds, 0 or more")
    return seconds


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Rows done of a pass (total: None when unknown): a tqdm bar on a terminal, periodic log lines otherwise."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "rows", enabled: bool | None = None,
                 seconds: float | None = None) -> None:
        """enabled: None means rank 0 of the job (the RANK environment variable), so only one process reports;
        seconds: between log lines (default progress_seconds())."""
        self.desc = desc
        self.total = total
        self.unit = unit
        self.enabled = int(os.environ.get("RANK", "0")) == 0 if enabled is None else enabled
        self.seconds = progress_seconds() if seconds is None else seconds
        self.done = 0
        self._bar: Any = None
        self._start = self._last = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            # leave=False: the command's own summary line follows; a finished bar would repeat it.
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        """Count n more rows done."""
        if not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """The log line: rows done (of the total), rows/s and, with a total, the ETA."""
        elapsed = max((time.monotonic() if now is None else now) - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            return f"{self.desc}: {self.done:,} {self.unit} in {_duration(elapsed)}, {rate:,.0f} {self.unit}/s"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = _duration(max(self.total - self.done, 0) / rate) if rate > 0 else "?"
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({percent:.0f}%) in {_duration(elapsed)}, "
                f"{rate:,.0f} {self.unit}/s, ETA {eta}")

    def close(self) -> None:
        """Remove the bar (log lines need no closing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def step_bar(enabled: bool, total: int | None, initial: int) -> Iterator[Any]:
    """The training's tqdm bar of steps (from `initial` of `total`) while the block runs, with log lines printed
    above it; None unless enabled (rank 0) on a terminal (stderr a TTY), where the loop's log lines say it all."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, leave=False)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.refresh()  # the final count, even when the last update fell inside tqdm's mininterval
        bar.close()


class Phases:
    """The named phases of a command (total: how many, None when unknown): a tqdm bar over them on a terminal,
    an INFO line at each phase's start and end otherwise; `seconds` holds each finished phase's duration (summed
    over the phases of one name)."""

    def __init__(self, desc: str, total: int | None = None, *, enabled: bool | None = None) -> None:
        """enabled: None means rank 0 of the job (the RANK environment variable), as for Progress."""
        self.desc = desc
        self.total = total
        self.enabled = int(os.environ.get("RANK", "0")) == 0 if enabled is None else enabled
        self.done = 0
        self.seconds: dict[str, float] = {}
        self._bar: Any = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="phase", dynamic_ncols=True, leave=False)

    def _label(self, name: str) -> str:
        count = self.done + 1
        return f"{self.desc} [{count}/{self.total}] {name}" if self.total else f"{self.desc} [{count}] {name}"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as the phase `name`; a phase that raises is not reported as done."""
        if not self.enabled:
            yield
            return
        label = self._label(name)
        if self._bar is not None:
            self._bar.set_description(f"{self.desc}: {name}")  # the bar counts the phases itself
        else:
            logger.info("%s ...", label)
        start = time.monotonic()
        yield
        elapsed = time.monotonic() - start
        self.done += 1
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        if self._bar is not None:
            self._bar.update(1)
        else:
            logger.info("%s: done in %.1f s", label, elapsed)

    def close(self) -> None:
        """Remove the bar (log lines need no closing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
