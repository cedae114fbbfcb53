"""`recap benchmark eval-memory`: both paths measured per rank, the same documents, requests cut by the split."""

import json
import math

import numpy as np
import pytest

from projects.home.recap.benchmarks.eval_memory import largest_relative_difference, rank_rows
from projects.home.recap.main import main


def test_rank_rows_split_the_same_requests_and_columns():
    one = rank_rows(0, 1, 1000, 3, 7)
    halves = [rank_rows(r, 2, 1000, 3, 7) for r in range(2)]
    assert one["predictions"].dtype == np.float32 and one["predictions"].shape == (1000, 3)
    ids = np.concatenate([h["request_ids"] for h in halves])
    assert np.array_equal(ids, one["request_ids"]) and ids[499] == ids[500]  # request 71 is cut by the split
    assert "request_ids" not in rank_rows(0, 1, 10, 1, 0)
    assert np.unique(one["predictions"][:, 0]).size < 1000  # ties


def test_largest_relative_difference():
    assert largest_relative_difference({"a": [1.0, None]}, {"a": [1.0, None]}) == (0.0, ".a[1]")
    assert largest_relative_difference({"a": [1.0, 2.0]}, {"a": [1.0, 2.2]})[1] == ".a[1]"
    assert largest_relative_difference({"a": 1}, {"b": 1})[0] == math.inf
    assert largest_relative_difference({"a": "x"}, {"a": "y"})[0] == math.inf


@pytest.mark.slow
def test_eval_memory_benchmark_reports_both_paths(tmp_path, capsys):
    out = tmp_path / "evalmem.json"
    assert main(["benchmark", "eval-memory", "--rows", "20000", "--ranks", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sharded's highest rank peak" in printed
    doc = json.loads(out.read_text())
    for method in ("gather", "sharded"):
        assert [r["rank"] for r in doc[method]] == [0, 1]
        assert all(r["peak_mib"] >= r["rss_before_mib"] > 0 and r["seconds"] > 0 for r in doc[method])
    assert doc["comparison"]["largest_relative_difference"] < 1e-9
