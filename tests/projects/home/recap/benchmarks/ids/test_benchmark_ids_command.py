"""`recap benchmark ids` end to end on a few thousand generated rows: both models train on the same batches, the
table and the JSON hold every task's figures next to the oracle's."""

from __future__ import annotations

import json

import pytest

from projects.home.recap.benchmarks.ids.run import IDS_CONFIG
from projects.home.recap.main import main
from projects.home.recap.schema import load_recap_config

TASKS = ["is_favorited", "is_retweeted", "is_replied", "is_quoted", "is_good_clicked", "is_profile_clicked",
         "is_video_playback_50", "is_shared", "is_negative_feedback", "is_report_tweet_clicked"]
# Small tables and a short warm-up for 5 training steps (2,700 training rows in batches of 512).
SMALL = ["model.large_embeddings.0.num_embeddings=2000", "model.large_embeddings.1.num_embeddings=1000",
         "model.large_embeddings.2.num_embeddings=500",
         "optimizer.dense.learning_rate.linear_ramp_to_cosine.num_ramp_steps=2"]


def test_the_shipped_config_reads_ids_and_no_upstream_embeddings(monkeypatch):
    monkeypatch.setenv("RECAP_DATA_DIR", "data/ids")
    config = load_recap_config(IDS_CONFIG)
    assert config.data.features.embeddings == []
    sizes = {t.name: t.num_embeddings for t in config.model.large_embeddings}
    assert sizes["user"] >= 200_000 and sizes["author"] >= 50_000  # the generator's users and authors
    assert list(config.model.tasks) == TASKS


def test_command_trains_both_models_and_prints_the_table(tmp_path, monkeypatch, capsys, progress_lines):
    monkeypatch.setenv("RECAP_DATA_DIR", "unused")  # restored after the test: the command sets it
    data, run, output = tmp_path / "data", tmp_path / "run", tmp_path / "figures.json"
    args = ["benchmark", "ids", "--data-dir", str(data), "--save-dir", str(run), "--rows", "3000",
            "--output", str(output), "--reference-lr", "0.02"]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ours" in printed and "reference" in printed and "oracle" in printed
    for task in TASKS:
        assert task in printed
    doc = json.loads(output.read_text())
    assert doc["generated"]["rows"] == {"train": 2700, "validation": 150, "test": 150}
    assert doc["generated"]["collaborative_dim"] == 4
    assert doc["ours"]["steps"] == doc["reference"]["steps"] == 5
    assert doc["reference"]["embedding_optimizer"] == {"type": "adam", "learning_rate": 0.02}
    assert doc["ours"]["sparse_optimizer"]["type"] == "adam"
    test = doc["datasets"]["test"]
    assert list(test) == TASKS
    for row in test.values():
        assert row["rows"] == 150 and set(row) >= {"ours", "reference", "oracle", "pos_rate"}
    assert test["is_favorited"]["oracle"]["rce"] > 0 and test["is_favorited"]["ours"]["auc"] is not None
    assert (run / "reference" / "eval" / "test" / "step_5" / "metrics.json").is_file()
    assert (run / "ours" / "checkpoints").is_dir()
    # Without a terminal the reference's training reports its rows as it goes, up to all of them.
    reference = [line for line in progress_lines() if line.startswith("training the reference model: ")]
    assert reference[-1].startswith("training the reference model: 2,560/2,560 rows (100%) in ")

    # A second run reuses the data; a save_dir that holds a run is refused before anything trains.
    with pytest.raises(SystemExit, match="already holds a run"):
        main(args)
