"""`recap demo`'s helpers: data from an older generator is generated again; the summary shows the ranking score; a
small --rows fits the warm-up into the run."""

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.config import ConfigError  # noqa: E402
from core.optimizers import check_schedules  # noqa: E402
from projects.home.recap.commands import demo  # noqa: E402
from projects.home.recap.commands.demo import _has_data, fit_schedule, print_comparison  # noqa: E402
from projects.home.recap.schema import load_recap_config  # noqa: E402


def test_data_missing_a_column_the_config_reads_is_generated_again(tmp_path):
    assert not _has_data(tmp_path, ["a"])
    for split in ("train", "validation", "test"):
        (tmp_path / split).mkdir()
        pq.write_table(pa.table({"a": [1], "request_id": [2]}), tmp_path / split / "part-00000.parquet")
    assert _has_data(tmp_path, ["a", "request_id"])
    assert not _has_data(tmp_path, ["a", "impression_id"])


def test_the_comparison_prints_the_ranking_score_ndcg(capsys):
    block = {"pos_rate": 0.1, "auc": 0.8, "rce": 9.0, "oracle": {"rce": 10.0}}
    metrics = {"tasks": {"fav": block},
               "ranking": {"requests": 12, "k": [5, 10], "score": {"ndcg@5": 0.61, "ndcg@10": 0.7}}}
    assert print_comparison("test", metrics)
    out = capsys.readouterr().out
    assert "90.0%  ok" in out
    assert "ranking score (model.scoring) over 12 requests: NDCG@5 0.6100  NDCG@10 0.7000" in out


def test_a_small_demo_fits_its_cosine_warm_up_into_the_run(tmp_path):
    # `recap demo --rows 4020` makes 56 steps of 32 rows on 2 ranks, fewer than the demo's warm-up of 100: the
    # demo ramps over a tenth of them instead of failing after generating the data.
    cosine = "{linear_ramp_to_cosine: {learning_rate: 0.003, final_learning_rate: 0.0001, num_ramp_steps: 100}}"
    values = helpers.overrides(helpers.make_data(tmp_path / "data"), tmp_path / "run", 1) + [
        "training.num_train_steps=null", "training.num_epochs=1", f"optimizer.dense.learning_rate={cosine}"]
    config = load_recap_config(helpers.DEMO, values)
    with pytest.raises(ConfigError, match=r"num_ramp_steps \(100\) must be below the last step of the cosine \(56"):
        check_schedules(config.optimizer.dense, 56)
    fitted = fit_schedule(config, 2)
    assert fitted == ["optimizer.dense.learning_rate.linear_ramp_to_cosine.num_ramp_steps=5"]
    check_schedules(load_recap_config(helpers.DEMO, values + fitted).optimizer.dense, 56)
    assert fit_schedule(load_recap_config(helpers.DEMO, values + fitted), 2) == []  # a schedule that fits is kept


def test_the_demo_reads_the_history_unless_told_not_to():
    import argparse

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    history = demo.demo_defaults(parser.parse_args([]))
    assert (history.config, history.data_dir, history.save_dir, history.rows) == (
        str(demo.DEMO_HISTORY_CONFIG), "data/demo_history", "runs/demo_history", demo.DEMO_HISTORY_ROWS)
    assert load_recap_config(history.config).data.features.sequences["history"].max_length == 32
    plain = demo.demo_defaults(parser.parse_args(["--no-history"]))
    assert (plain.config, plain.data_dir, plain.save_dir, plain.rows) == (
        str(demo.DEMO_CONFIG), "data/demo", "runs/demo", demo.DEMO_ROWS)
    assert not load_recap_config(plain.config).data.features.sequences
    given = demo.demo_defaults(parser.parse_args(["--no-history", "--data-dir", "d", "--rows", "7"]))
    assert (given.data_dir, given.rows, given.save_dir) == ("d", 7, "runs/demo")
