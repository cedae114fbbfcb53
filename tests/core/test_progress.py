"""core.progress: periodic log lines with rows/s and ETA without a terminal, a tqdm bar with one, nothing on the
other ranks of a job; the training's bar of steps; the same for a command's named phases (a line at each
phase's start and end)."""

import logging
import sys

import pytest

from core.progress import ENV_SECONDS, Phases, Progress, progress_seconds


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "core.progress"]


def test_without_a_terminal_it_logs_rows_rows_per_second_and_eta_every_interval(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.set_level(logging.INFO)
    with Progress("scoring", total=300, enabled=True) as progress:
        for _ in range(3):
            progress.update(100)
    lines = progress_lines(caplog)
    assert len(lines) == 3
    assert lines[0].startswith("scoring: 100/300 rows (33%) in ") and "rows/s, ETA " in lines[0]
    assert lines[-1].startswith("scoring: 300/300 rows (100%)") and lines[-1].endswith("ETA 0:00")


def test_an_unknown_total_logs_rows_and_rate_and_the_interval_spaces_the_lines(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    with Progress("generating", enabled=True, seconds=0) as progress:
        progress.update(5)
    with Progress("generating", enabled=True, seconds=3600) as progress:
        progress.update(5)  # within the first interval: no line yet
    lines = progress_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("generating: 5 rows in 0:00, ") and lines[0].endswith("rows/s")
    assert "ETA" not in lines[0]


def test_other_ranks_show_nothing(monkeypatch, caplog, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.set_level(logging.INFO)
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        with Progress("evaluating test", total=10) as progress:  # enabled by default on rank 0 only
            progress.update(10)
    assert progress_lines(caplog) == [] and capsys.readouterr().err == ""


def test_on_a_terminal_it_is_a_tqdm_bar_instead_of_log_lines(monkeypatch, caplog, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv(ENV_SECONDS, "0")
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO)
    with Progress("evaluating test", total=1000) as progress:
        assert type(progress._bar).__name__ == "tqdm"
        progress.update(400)
        progress._bar.refresh()
        assert progress._bar.n == 400
    err = capsys.readouterr().err
    assert "evaluating test" in err and "400/1.00k" in err and "rows/s" in err
    assert progress_lines(caplog) == []


def test_the_interval_comes_from_the_environment_and_a_bad_value_names_it(monkeypatch):
    monkeypatch.delenv(ENV_SECONDS, raising=False)
    assert progress_seconds() == 30.0
    monkeypatch.setenv(ENV_SECONDS, "0.5")
    assert progress_seconds() == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(ENV_SECONDS, bad)
        with pytest.raises(ValueError, match=ENV_SECONDS):
            progress_seconds()


def test_the_training_step_bar_shows_on_a_terminal_of_rank_zero_only(monkeypatch):
    import io

    from core.progress import step_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with step_bar(False, 4, 0) as bar:
        assert bar is None
    with step_bar(True, 4, 1) as bar:
        bar.update(3)
    frames = terminal.getvalue().replace("\r", "\n")
    assert "train: 100%" in frames and "4/4" in frames
    monkeypatch.setattr(terminal, "isatty", lambda: False)
    with step_bar(True, 4, 0) as bar:
        assert bar is None


def test_without_a_terminal_each_phase_logs_its_start_and_its_seconds(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    clock = iter([10.0, 12.5, 20.0, 20.25])
    monkeypatch.setattr("core.progress.time.monotonic", lambda: next(clock))
    with Phases("export", total=2, enabled=True) as phases:
        with phases.phase("tracing"):
            pass
        with phases.phase("saving"):
            pass
    assert progress_lines(caplog) == ["export [1/2] tracing ...", "export [1/2] tracing: done in 2.5 s",
                                      "export [2/2] saving ...", "export [2/2] saving: done in 0.2 s"]
    assert phases.seconds == {"tracing": 2.5, "saving": 0.25} and phases.done == 2


def test_a_phase_that_fails_is_not_reported_done_and_an_unknown_total_numbers_the_phases(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    with Phases("export", enabled=True) as phases:
        with phases.phase("loading"):
            pass
        with pytest.raises(RuntimeError, match="no checkpoint"), phases.phase("tracing"):
            raise RuntimeError("no checkpoint")
    lines = progress_lines(caplog)
    assert lines[0] == "export [1] loading ..." and lines[2] == "export [2] tracing ..." and len(lines) == 3
    assert list(phases.seconds) == ["loading"]


def test_phases_on_a_terminal_are_a_bar_and_on_other_ranks_nothing(monkeypatch, caplog, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO)
    with Phases("export", total=3) as phases:
        with phases.phase("tracing"):
            pass
        phases._bar.refresh()
        assert phases._bar.n == 1
    assert "export: tracing" in capsys.readouterr().err and progress_lines(caplog) == []
    monkeypatch.setenv("RANK", "1")
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        with Phases("export", total=1) as phases, phases.phase("tracing"):
            pass
    assert progress_lines(caplog) == [] and capsys.readouterr().err == "" and phases.seconds == {}
