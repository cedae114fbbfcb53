"""`recap demo`'s helpers: data from an older generator is generated again; the summary shows the ranking score."""

import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.commands.demo import _has_data, print_comparison


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
