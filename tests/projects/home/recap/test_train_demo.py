"""`recap demo` end to end on a tiny generated dataset: generate, train on 2 ranks, evaluate against the oracle."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

TASKS = ["is_favorited", "is_retweeted", "is_replied", "is_quoted", "is_good_clicked", "is_profile_clicked",
         "is_video_playback_50", "is_shared", "is_negative_feedback", "is_report_tweet_clicked"]


@pytest.mark.slow
def test_demo_generates_trains_on_two_ranks_and_compares_with_the_oracle(tmp_path):
    data_dir, save_dir = tmp_path / "data", tmp_path / "run"
    done = helpers.recap(
        "demo", "--data-dir", str(data_dir), "--save-dir", str(save_dir), "--rows", str(helpers.ROWS),
        "--set", "data.batch_size=64", "--set", "data.num_workers=0",
        "--set", "model.large_embeddings.0.num_embeddings=500",
        "--set", "model.large_embeddings.1.num_embeddings=300",
        "--set", "model.large_embeddings.2.num_embeddings=200",
        "--set", "optimizer.dense.learning_rate.linear_ramp_to_cosine.num_ramp_steps=3",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for split in ("train", "validation", "test"):
        assert list((data_dir / split).glob("*.parquet"))
    # 3618 training rows, batches of 64 on 2 ranks: 28 steps in the demo's one epoch; the cosine ends there.
    assert "final_num_steps=28)" in done.stderr
    assert "training finished at step 28" in done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("test: task"))
    table = lines[header + 1:][:10]
    assert [line.split()[0] for line in table] == TASKS
    assert any(line.startswith("target (RCE >= 80% of the oracle's") for line in lines)
    assert f"TensorBoard:  tensorboard --logdir {save_dir / 'tensorboard'}" in lines
    report = save_dir / "eval" / "test" / "step_28" / "report.html"
    assert f"report:       {report}" in lines and report.is_file()
    evaluated = json.loads((report.parent / "metrics.json").read_text())
    assert {block["rows"] for block in evaluated["tasks"].values()} == {201}
    # The generator's true probabilities reach the evaluation through the loader.
    assert all("oracle" in block for block in evaluated["tasks"].values())
    assert evaluated["tasks"]["is_favorited"]["oracle"]["auc"] > 0.6
    assert all(len(line.split()) >= 6 for line in table)
