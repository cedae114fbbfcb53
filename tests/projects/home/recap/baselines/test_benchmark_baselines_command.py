"""`recap benchmark baselines --quick` end to end on the small data: three models per task in the table and the
JSON, the command line written down, a reused data directory, and errors that name the bad option."""

from __future__ import annotations

import json

import pytest

from projects.home.recap.main import main


def test_quick_run_writes_every_model_per_task(tmp_path, capsys):
    output = tmp_path / "out" / "baselines.json"
    args = ["benchmark", "baselines", "--data", "small", "--quick", "--small-dir", str(tmp_path / "data"),
            "--save-dir", str(tmp_path / "run"), "--output", str(output)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for word in ("ours AUC", "plain AUC", "peer AUC", "ours-peer", "click", "purchase"):
        assert word in printed
    doc = json.loads(output.read_text())
    assert doc["command"].startswith("recap benchmark baselines --data small") and "--quick" in doc["command"]
    small = doc["datasets"]["small"]
    assert list(doc["datasets"]) == ["small"]
    assert small["data"]["rows"] == {"train": 4_000, "validation": 500, "test": 500}
    assert list(small["tasks"]) == ["click", "purchase"]
    for row in small["tasks"].values():
        for model in ("ours", "plain", "peer"):
            assert row[model]["auc"] is not None and row[model]["rows"] == 500
        assert row["ours_minus_peer_auc"] == pytest.approx(row["ours"]["auc"] - row["peer"]["auc"])
        assert row["oracle"]["auc"] > 0.5
    assert small["ours"]["epochs"] == small["plain"]["epochs"] == 1 and small["ours"]["steps"] == 15
    assert (tmp_path / "run" / "small" / "ours" / "checkpoints").is_dir()

    # The data is reused; a save_dir holding a run is refused before anything trains.
    with pytest.raises(SystemExit, match="already holds a run"):
        main(args)


def test_bad_options_name_what_is_wrong(tmp_path):
    with pytest.raises(SystemExit, match="name the data set"):
        main(["benchmark", "baselines", "--config", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown data set 'movies'"):
        main(["benchmark", "baselines", "--config", "movies=x.yaml"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["benchmark", "baselines", "--data", "small", "--config", str(tmp_path / "missing.yaml")])
