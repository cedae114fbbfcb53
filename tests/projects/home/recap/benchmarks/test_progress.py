"""The benchmarks report their progress through core.progress: without a terminal a log line per interval with the
rows their timed windows have processed (and, with a known total, the ETA); on a terminal a tqdm bar instead; a
phase that processes no rows shows nothing."""

from __future__ import annotations

import logging
import re
import sys

import pytest

from projects.home.recap.benchmarks.throughput import Phases
from projects.home.recap.main import main


def rows_done(line: str) -> int:
    return int(re.search(r": ([\d,]+)(/[\d,]+)? rows ", line).group(1).replace(",", ""))


def test_history_transformer_logs_the_rows_of_each_setting(progress_lines, capsys):
    assert main(["benchmark", "history", "--parts", "transformer", "--lengths", "16", "--candidates", "1", "4",
                 "--rows", "8", "--dim", "8", "--heads", "2", "--seconds", "0.05"]) == 0
    lines = progress_lines()
    for candidates in (1, 4):
        prefix = f"history: transformer, length 16, {candidates} candidates: "
        setting = [line for line in lines if line.startswith(prefix)]
        # 64 rows per call (8 x 128 / 16), at least 3 timed windows of each path, a line after each window.
        done = [rows_done(line) for line in setting]
        assert len(done) >= 6 and done == sorted(done) and done[-1] >= 6 * 64 and done[-1] % 64 == 0
        assert all(re.fullmatch(prefix + r"[\d,]+ rows in \d+:\d\d, [\d,]+ rows/s", line) for line in setting)
    assert "request path rows/s" in capsys.readouterr().out  # the table is printed as before


def test_the_throughput_phases_report_rows_and_only_where_there_are_rows(progress_lines):
    phase = Phases("demo")
    with phase("fp32 training") as progress:
        progress.update(512)
        progress.update(512)
    with phase("fp32 matmul peak on the model's shapes", rows=False) as progress:
        progress.update(1)
    assert [rows_done(line) for line in progress_lines()] == [512, 1024]
    assert all(line.startswith("demo: fp32 training: ") for line in progress_lines())
    assert list(phase.seconds) == ["fp32 training", "fp32 matmul peak on the model's shapes"]


def test_on_a_terminal_a_phase_is_a_bar(monkeypatch, caplog, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO)
    phase = Phases("demo")
    with phase("bf16 evaluation") as progress:
        progress.update(2048)
        progress._bar.refresh()
    with phase("write temporary parquet data", rows=False) as progress:
        assert progress._bar is None  # no bar for a phase without rows
    err = capsys.readouterr().err
    assert "demo: bf16 evaluation: 2.05krows" in err and "rows/s" in err
    assert [r for r in caplog.records if r.name == "core.progress"] == []


def test_other_ranks_show_no_progress(monkeypatch, caplog, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("RECAP_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO)
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        with Phases("demo")("fp32 training") as progress:
            progress.update(512)
    assert [r for r in caplog.records if r.name == "core.progress"] == [] and "rows" not in capsys.readouterr().err


@pytest.mark.slow
def test_eval_memory_logs_the_rows_of_each_method_with_the_eta(progress_lines):
    assert main(["benchmark", "eval-memory", "--rows", "2000", "--ranks", "1"]) == 0
    lines = [line for line in progress_lines() if line.startswith("exact evaluation, gather then sharded: ")]
    assert len(lines) == 2
    assert lines[0].startswith("exact evaluation, gather then sharded: 2,000/4,000 rows (50%) in ") and "ETA" in lines[0]
    assert lines[1].startswith("exact evaluation, gather then sharded: 4,000/4,000 rows (100%) in ")
