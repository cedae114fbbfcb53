"""`recap benchmark history` runs and reports both parts (no speed assertions)."""

import json

import pytest

from projects.home.recap.main import main


def test_history_benchmark_reports_both_paths(tmp_path, capsys):
    out = tmp_path / "history.json"
    assert main(["benchmark", "history", "--parts", "transformer", "--lengths", "16", "--candidates", "1", "4", "--rows", "8", "--dim", "8",
                 "--heads", "2", "--seconds", "0.05", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "request path rows/s" in printed and "speed-up" in printed
    results = json.loads(out.read_text())["results"]
    assert [(r["history_length"], r["candidates_per_request"]) for r in results] == [(16, 1), (16, 4)]
    for r in results:
        assert r["max_abs_difference"] < 1e-5
        for path in ("request_path", "row_path"):
            assert r[path]["flops"] > 0 and 0 < r[path]["mfu"] and r[path]["rows_per_second"] > 0
    # Four candidates share one history encoding: fewer FLOPs than four copies of it.
    assert results[1]["request_path"]["flops"] < results[1]["row_path"]["flops"]


def test_history_benchmark_compares_training_with_and_without_the_history(tmp_path, capsys):
    from projects.home.recap.data.synthetic import SyntheticSpec, generate

    generate(tmp_path / "data", 2_500, spec=SyntheticSpec(history_length=8))
    out = tmp_path / "history.json"
    assert main(["benchmark", "history", "--parts", "training", "--data-dir", str(tmp_path / "data"),
                 "--train-batches", "2", "--train-seconds", "0.01", "--torchrun", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "demo_history rows/s" in printed and "ratio" in printed
    doc = json.loads(out.read_text())["training"]
    one = doc["one_rank"]
    assert one["demo"]["rows_per_second"] > 0 and one["demo_history"]["rows_per_second"] > 0
    assert one["ratio"] == one["demo_history"]["rows_per_second"] / one["demo"]["rows_per_second"]
    assert 0 < doc["history_items_per_row"] <= 8
    # The history adds FLOPs per row; the per-FLOP figure is the rows/s ratio scaled by them.
    assert doc["flops_per_row"]["demo_history"] > doc["flops_per_row"]["demo"] > 0
    assert doc["flops_ratio"] == doc["flops_per_row"]["demo_history"] / doc["flops_per_row"]["demo"]
    assert one["flop_rate_ratio"] == pytest.approx(one["ratio"] * doc["flops_ratio"])
    assert "per FLOP" in printed and "FLOPs per row" in printed
    assert "results" not in json.loads(out.read_text())
    # On 2 ranks, both configs in one torchrun job, in turns.
    ranks = doc["torchrun"]
    assert ranks["demo"]["world_size"] == ranks["demo_history"]["world_size"] == 2
    assert ranks["ratio"] == ranks["demo_history"]["examples_per_second"] / ranks["demo"]["examples_per_second"]
    assert ranks["median_ratio"] == (ranks["demo_history"]["median_examples_per_second"]
                                     / ranks["demo"]["median_examples_per_second"])
    assert printed.count("x (") == 2  # the ratio, best (median), on 1 and 2 ranks
