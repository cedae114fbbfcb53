"""`recap data generate`, `data prepare` and `data downsample` log their progress (rows done, rows/s, ETA) when
stderr is not a terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from projects.home.recap.data.synthetic import generate
from projects.home.recap.main import main

DEMO = Path(__file__).parents[5] / "projects/home/recap/config/demo.yaml"


@pytest.fixture
def progress_lines(monkeypatch, caplog):
    """The progress lines logged so far, with a line at every update (interval 0 s) and no terminal."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("RECAP_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO)
    return lambda: [r.getMessage() for r in caplog.records if r.name == "core.progress"]


@pytest.mark.parametrize("processes", [1, 2])
def test_generate_counts_each_written_file(tmp_path, progress_lines, processes):
    generate(tmp_path / "d", 3_000, rows_per_file=500, processes=processes)
    lines = progress_lines()
    assert len(lines) >= 6 and all(line.startswith("generating: ") and "rows/s, ETA" in line for line in lines)
    assert lines[-1].startswith("generating: 3,000/3,000 rows (100%)")


def test_prepare_and_downsample_count_every_source_row(tmp_path, monkeypatch, progress_lines):
    generate(tmp_path / "d", 3_000, rows_per_file=1_000, processes=1)
    train = tmp_path / "d" / "train"
    assert main(["data", "prepare", str(train), str(tmp_path / "prepared")]) == 0
    rows = ds.dataset(train).count_rows()
    prepared = [line for line in progress_lines() if line.startswith(f"preparing {tmp_path / 'prepared'}: ")]
    assert prepared and prepared[-1].startswith(f"preparing {tmp_path / 'prepared'}: {rows:,}/{rows:,} rows (100%)")
    monkeypatch.setenv("RECAP_DATA_DIR", str(tmp_path / "d"))
    assert main(["data", "downsample", "--config", str(DEMO), "--output", str(tmp_path / "out"),
                 "--keep-rate", "0.5"]) == 0
    downsampled = [line for line in progress_lines() if line.startswith("downsampling train: ")]
    assert downsampled and downsampled[-1].startswith(f"downsampling train: {rows:,}/{rows:,} rows (100%)")
