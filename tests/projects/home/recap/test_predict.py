"""`recap predict`: one row out per row in, the id columns and every task's probability and calibrated
probability equal to the unsharded model's, no label columns needed, and clear errors for bad inputs and outputs."""

import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from projects.home.recap.data.config import DatasetConfig  # noqa: E402
from projects.home.recap.data.loader import RecapDataLoader  # noqa: E402
from projects.home.recap.inference import load_for_inference  # noqa: E402
from projects.home.recap.main import main  # noqa: E402

COLUMNS = ["impression_id", "request_id", "fav.probability", "fav.calibrated", "reply.probability",
           "reply.calibrated", "score"]


@pytest.fixture(scope="module")
def unlabeled(data_dir, tmp_path_factory):
    """The test split without its label and oracle columns."""
    table = pq.read_table(data_dir / "test")
    keep = [c for c in table.column_names if not c.startswith((helpers.LABEL_PREFIX, "oracle."))]
    path = tmp_path_factory.mktemp("unlabeled") / "rows.parquet"
    pq.write_table(table.select(keep), path, row_group_size=50)
    return path


def in_process_scores(config, path: Path) -> dict[int, np.ndarray]:
    """impression_id -> [fav p, fav calibrated, reply p, reply calibrated, score] from the unsharded model."""
    model = load_for_inference(config, "latest")
    out = {}
    with torch.no_grad():
        for batch in RecapDataLoader(config.data, DatasetConfig(paths=[str(path)]), ["fav", "reply"], "predict"):
            o = model(batch)[1]
            scores = torch.stack([o["probabilities"][:, 0], o["calibrated_probabilities"][:, 0],
                                  o["probabilities"][:, 1], o["calibrated_probabilities"][:, 1], o["score"]], 1)
            out.update(zip(batch.ids["impression_id"].tolist(), scores.numpy()))
    return out


def test_predict_scores_every_row_without_labels(trained_run, unlabeled, tmp_path, capsys):
    config_file, _ = trained_run
    out = tmp_path / "scores"
    argv = ["predict", "--config", str(config_file), "--checkpoint", "latest", "--input", str(unlabeled),
            "--output", str(out), "--batch-size", "32"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"202 rows scored into {out}"
    assert [p.name for p in out.iterdir()] == ["part-00000-of-00001.parquet"]
    table = pq.read_table(out)
    assert table.num_rows == pq.read_metadata(unlabeled).num_rows == 202
    assert table.column_names == COLUMNS
    assert table.schema.field("fav.calibrated").type == pa.float32()
    ids = table["impression_id"].to_pylist()
    assert sorted(ids) == sorted(pq.read_table(unlabeled, columns=["impression_id"])["impression_id"].to_pylist())
    expected = in_process_scores(helpers.load(config_file), unlabeled)
    got = np.stack([table[c].to_numpy() for c in COLUMNS[2:]], 1)
    np.testing.assert_allclose(got, np.stack([expected[i] for i in ids]), rtol=0, atol=1e-5)
    # fav was trained at neg_rate 0.5: its calibrated probability is lower; reply was not downsampled.
    assert (got[:, 1] < got[:, 0]).all() and np.array_equal(got[:, 2], got[:, 3])
    # score = 1 * fav + 5 * reply (model.scoring of the test config), over the calibrated probabilities.
    np.testing.assert_allclose(got[:, 4], got[:, 1] + 5 * got[:, 3], rtol=1e-6, atol=1e-6)


def test_predict_logs_its_progress_without_a_terminal(trained_run, unlabeled, tmp_path, monkeypatch, caplog):
    config_file, _ = trained_run
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("RECAP_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO)
    assert main(["predict", "--config", str(config_file), "--checkpoint", "latest", "--input", str(unlabeled),
                 "--output", str(tmp_path / "scores"), "--batch-size", "64"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "core.progress"]
    # One line per batch of 64 at an interval of 0 s, rows counted on the host.
    assert [line.split(" in ")[0] for line in lines] == [f"scoring: {n}/202 rows ({100 * n / 202:.0f}%)"
                                                          for n in (64, 128, 192, 202)]


def test_existing_output_needs_overwrite(trained_run, data_dir, tmp_path, capsys):
    config_file, save_dir = trained_run
    out = tmp_path / "scores"
    argv = ["predict", "--config", str(config_file), "--checkpoint", str(save_dir), "--input",
            str(data_dir / "single"), "--output", str(out)]
    assert main(argv) == 0
    assert main(argv) == 1
    assert f"output directory {out} already holds predictions" in capsys.readouterr().err
    assert main([*argv[:-2], "--input", str(data_dir / "validation"), "--output", str(out), "--overwrite"]) == 0
    assert pq.read_table(out).num_rows == 201


def test_empty_input_and_missing_checkpoint_fail_clearly(trained_run, data_dir, tmp_path, capsys):
    config_file, _ = trained_run
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(data_dir / "test").slice(0, 0), empty)
    argv = ["predict", "--config", str(config_file), "--checkpoint", "latest", "--input", str(empty),
            "--output", str(tmp_path / "out")]
    assert main(argv) == 1
    assert f"file {empty}: empty dataset: 1 files but no rows" in capsys.readouterr().err

    missing = tmp_path / "no_run"
    argv = ["predict", "--config", str(config_file), "--checkpoint", str(missing), "--input",
            str(data_dir / "test"), "--output", str(tmp_path / "out")]
    assert main(argv) == 1
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_predict_runs_the_model_under_the_training_precision(trained_run, data_dir, tmp_path, monkeypatch, precision):
    import projects.home.recap.predict as predict_module

    seen = []
    run_model = predict_module.run_model

    def recording(*args, **kwargs):
        for item in run_model(*args, **kwargs):
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            yield item

    monkeypatch.setattr(predict_module, "run_model", recording)
    config_file, _ = trained_run
    argv = ["predict", "--config", str(config_file), "--checkpoint", "latest", "--input", str(data_dir / "single"),
            "--output", str(tmp_path / "out"), "--set", f"training.mixed_precision={precision}"]
    assert main(argv) == 0
    assert seen == [precision == "bf16"]
    assert pq.read_table(tmp_path / "out").num_rows == 1
