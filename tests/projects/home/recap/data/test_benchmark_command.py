"""`recap data benchmark` runs end to end and prints its figures (speed itself is not asserted)."""

from __future__ import annotations

import re

from projects.home.recap.main import main


def test_prints_rows_per_second_for_each_worker_count(capsys):
    assert main(["data", "benchmark", "--generate", "3000", "--num-workers", "0", "1", "--batch-size", "256",
                 "--train-rows-per-second", "1000", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"num_workers=(\d) epoch 0: ([\d,]+) rows/s \((\d+) batches", out)
    assert [(w, int(n)) for w, _, n in lines] == [("0", 10), ("1", 10)]  # 2,700 training rows, batches of 256
    assert "x training" in out
