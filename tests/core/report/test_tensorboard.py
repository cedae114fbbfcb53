"""TensorBoard: metrics out as eval/<dataset>/<task>/<metric> scalars, training curves back in from event files."""

import pytest
from torch.utils.tensorboard import SummaryWriter

from core.report import metrics_to_scalars, read_training_scalars, write_metrics_to_tensorboard

METRICS = {
    "dataset": "test",
    "step": 30,
    "tasks": {
        "fav": {"auc": 0.75, "rce": 12.5, "nrce": None, "count": 10.0, "rows": 10, "notes": [],
                "oracle": {"auc": 0.8, "rce": 20.0, "count": 10.0, "notes": []},
                "strata": {"client": {"1": {"auc": 0.5, "count": 4.0, "notes": []}}}},
    },
}


def test_metrics_to_scalars_tags_and_nulls():
    scalars = metrics_to_scalars(METRICS)
    assert scalars == {"eval/test/fav/auc": 0.75, "eval/test/fav/rce": 12.5, "eval/test/fav/count": 10.0,
                       "eval/test/fav/oracle/auc": 0.8, "eval/test/fav/oracle/rce": 20.0,
                       "eval/test/fav/oracle/count": 10.0}
    with_strata = metrics_to_scalars(METRICS, prefix="offline", include_strata=True)
    assert with_strata["offline/test/fav/client=1/auc"] == 0.5


def test_written_metrics_and_training_scalars_read_back(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for step in (0, 10, 20):
        writer.add_scalar("loss/total", 1.0 / (1 + step), step)
    writer.add_scalar("loss/total", 0.25, 20)  # logged again after a resume: the later value wins
    assert write_metrics_to_tensorboard(writer, METRICS) == 6
    writer.close()
    scalars = read_training_scalars(tmp_path)
    assert [s for s, _ in scalars["loss/total"]] == [0, 10, 20]
    assert scalars["loss/total"][1][1] == pytest.approx(1 / 11) and scalars["loss/total"][2][1] == 0.25
    assert scalars["eval/test/fav/auc"] == [(30, 0.75)]


def test_several_event_directories_are_prefixed_and_missing_dirs_are_empty(tmp_path):
    for sub in ("train", "eval"):
        writer = SummaryWriter(str(tmp_path / sub))
        writer.add_scalar("x", 1.0, 0)
        writer.close()
    assert set(read_training_scalars(tmp_path)) == {"train/x", "eval/x"}
    assert read_training_scalars(tmp_path / "missing") == {}
