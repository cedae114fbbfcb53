"""The plain-text summary of an evaluation (eval_report.py): each task's rows, AUC, RCE and calibration, the
oracle's RCE when the data has one, and how many requests the ranking metrics average over."""

from projects.home.recap.eval_report import summary_lines


def test_summary_lines_show_each_task_and_the_oracle_when_there_is_one():
    block = {"rows": 10, "auc": 0.75, "rce": 12.5, "calibration": 1.02}
    plain = summary_lines({"test": {"step": 7, "tasks": {"fav": block, "rare": {"rows": 10, "auc": None}}}})
    assert plain[0].startswith("test (step 7): task") and "oracle" not in plain[0]
    assert plain[1].split() == ["fav", "10", "0.7500", "12.50", "1.020"]
    assert plain[2].split() == ["rare", "10", "-", "-", "-"]
    with_oracle = summary_lines({"test": {"step": 7, "tasks": {"fav": {**block, "oracle": {"rce": 20.0}}}}})
    assert with_oracle[0].endswith("oracle RCE") and with_oracle[1].split()[-1] == "20.00"


def test_the_ranking_summary_says_how_many_requests_ndcg_averages():
    ranking = {"requests": 313, "k": [5, 10],
               "score": {"ndcg@5": 0.5, "requests@5": 258, "ndcg@10": 0.6, "requests@10": 258}}
    lines = summary_lines({"test": {"step": 7, "tasks": {}, "ranking": ranking}})
    assert lines[-1] == ("  ranking score over 313 requests (NDCG averaged over the 258 with a positive gain): "
                         "NDCG@5 0.5000  NDCG@10 0.6000")
