"""Training the recap model on tiny generated data: exact resume in one process, and a real 2-process run started by
`recap train --nproc-per-node 2` that checkpoints, logs to TensorBoard and evaluates with uneven ranks."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402

data_dir, ctx = helpers.data_dir, helpers.ctx  # the module's fixtures


def test_stop_and_resume_gives_the_parameters_of_a_straight_run(data_dir, ctx, tmp_path):
    from projects.home.recap.train import train

    straight = train(helpers.config(data_dir, tmp_path / "straight", 8), ctx)
    first = train(helpers.config(data_dir, tmp_path / "resumed", 4), ctx)
    torch.manual_seed(99)  # the resumed run restores every random generator it uses
    resumed = train(helpers.config(data_dir, tmp_path / "resumed", 8), ctx)
    assert (straight.step, first.step, resumed.step) == (8, 4, 8)
    assert resumed.resumed_from == tmp_path / "resumed" / "checkpoints" / "step_00000004"
    config = helpers.config(data_dir, tmp_path / "unused", 1)
    a = helpers.checkpoint_state(config, ctx, straight.checkpoint)
    b = helpers.checkpoint_state(config, ctx, resumed.checkpoint)
    assert a.keys() == b.keys()
    assert any("large_embeddings" in k for k in a) and any("momentum1" in k for k in a)
    assert any(k.endswith("exp_avg_sq") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")


@pytest.mark.slow
def test_two_process_training_checkpoints_logs_and_evaluates(data_dir, ctx, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from projects.home.recap.evaluate import evaluate_checkpoint

    save_dir = tmp_path / "run"
    values = helpers.overrides(data_dir, save_dir, 24, eval_every_n=12)
    done = helpers.recap("train", "--nproc-per-node", "2", "--config", str(helpers.DEMO), *helpers.set_args(values))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "sharding plan for 2 rank(s)" in done.stderr

    checkpoints = list_checkpoints(save_dir / "checkpoints")
    assert [c.step for c in checkpoints] == [10, 20, 24]
    assert {p.name for p in checkpoints[-1].path.glob("rank_*.json")} == {"rank_0.json", "rank_1.json"}
    assert {p.name for p in checkpoints[-1].path.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}

    events = EventAccumulator(str(save_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    tasks = ["is_favorited", "is_retweeted", "is_report_tweet_clicked"]
    assert {f"train/loss/{t}" for t in tasks} <= tags
    assert {"train/loss", "train/learning_rate/shared", "train/examples_per_second",
            "train/examples_per_second/rank_0", "train/examples_per_second/rank_1"} <= tags
    assert {f"eval/{d}/{t}/{m}" for d in ("validation", "test") for t in tasks for m in ("logloss", "pos_rate")} <= tags
    # (AUC is left out where 201 rows hold no positive of a rare task.)
    assert {"eval/validation/is_favorited/auc", "eval/test/is_favorited/rce"} <= tags
    assert {"eval/validation/loss", "eval/test/loss"} <= tags
    # Logged every 5 steps and whenever a checkpoint (10, 20) or an evaluation (12, 24) is due; the schedule the
    # tests set ramps linearly to 0.002 over 100 steps.
    lrs = [(e.step, e.value) for e in events.Scalars("train/learning_rate/shared")]
    assert [s for s, _ in lrs] == [5, 10, 12, 15, 20, 24]
    assert [v for _, v in lrs] == pytest.approx([0.002 * s / 100 for s, _ in lrs], rel=1e-6)

    # Every validation row counted once (rank 0 padded a step with a zero-weight batch), with reports at both
    # evaluation steps, and the two-rank evaluation equals a one-process evaluation of the final checkpoint.
    for step in (12, 24):
        for dataset in ("validation", "test"):
            directory = save_dir / "eval" / dataset / f"step_{step}"
            assert {"metrics.json", "report.html", "report.md"} <= {p.name for p in directory.iterdir()}
    during = {d: json.loads((save_dir / "eval" / d / "step_24" / "metrics.json").read_text())
              for d in ("validation", "test")}
    assert {block["rows"] for block in during["validation"]["tasks"].values()} == {201}
    assert "evaluation at step 24" in done.stderr and "eval/validation/loss=" in done.stderr
    assert "validation (step 24): task" in done.stderr  # the per-task summary on the console
    config = helpers.config(data_dir, tmp_path / "alone", 1)
    _, alone = evaluate_checkpoint(config, str(save_dir / "checkpoints"), ["validation", "test"], ctx)
    for dataset in ("validation", "test"):
        for task, block in during[dataset]["tasks"].items():
            for metric in ("logloss", "auc", "count", "rows"):
                expected = block[metric] if block[metric] is None else pytest.approx(block[metric], rel=1e-4)
                assert alone[dataset]["tasks"][task][metric] == expected, (dataset, task, metric)


def _dense_parameters(config, ctx) -> dict[str, torch.Tensor]:
    from projects.home.recap.train import build_training

    model, _, _ = build_training(config, ctx)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "large_embeddings" not in n}


def test_training_seed_decides_the_initial_dense_parameters(ctx, tmp_path):
    def dense(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(1000 + seed)  # the process's random state before building must not matter
        return _dense_parameters(helpers.config(tmp_path, tmp_path / "save", 1, seed=seed), ctx)

    first, again, other = dense(5), dense(5), dense(6)
    assert first.keys() == again.keys() == other.keys()
    assert any(".featurizer." in n for n in first) and any(".task_modules." in n for n in first)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    # Randomly initialized weights (not the constant LayerNorm scales or zero biases) change with the seed.
    random_init = [n for n in first if first[n].dim() == 2]
    assert random_init and all(not torch.equal(first[n], other[n]) for n in random_init)


def test_train_without_training_data_is_a_config_error(ctx, tmp_path):
    from core.config import ConfigError
    from projects.home.recap.schema import load_recap_config
    from projects.home.recap.train import train

    config = load_recap_config(helpers.DEMO, helpers.overrides(tmp_path, tmp_path / "save", 1) + ["data.train=null"])
    with pytest.raises(ConfigError, match="data.train: no training dataset"):
        train(config, ctx)
    assert not (tmp_path / "save").exists()


def test_resuming_with_a_changed_model_is_one_clear_error_and_keeps_the_checkpoints(data_dir, ctx, tmp_path):
    from core.checkpoint import CheckpointMismatchError
    from projects.home.recap.schema import load_recap_config
    from projects.home.recap.train import train

    train(helpers.config(data_dir, tmp_path, 4), ctx)
    changed = load_recap_config(helpers.DEMO, helpers.overrides(data_dir, tmp_path, 8)
                                + ["model.large_embeddings.0.embedding_dim=8"])
    with pytest.raises(CheckpointMismatchError, match=r"step_00000004 does not fit this run's model and optimizers "
                                                      r"\(was the config changed\?\): model\.model\.dense\.\S+ has "
                                                      r"shape \(128, 200\), this run has \(128, 192\); .* and \d+ more"):
        train(changed, ctx)
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4]


def test_broken_checkpoints_stop_training_unless_it_is_asked_to_start_over(data_dir, ctx, tmp_path):
    from core.checkpoint import CheckpointError
    from projects.home.recap.train import train

    train(helpers.config(data_dir, tmp_path, 4), ctx)
    for data in (tmp_path / "checkpoints").glob("step_*/*.distcp"):
        data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* was rejected:\n  step_00000004: "):
        train(helpers.config(data_dir, tmp_path, 8), ctx)
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [4]
    result = train(helpers.config(data_dir, tmp_path, 8), ctx, start_over=True)
    assert result.step == 8 and result.resumed_from is None
    assert (tmp_path / "checkpoints" / "step_00000004.replaced").is_dir()


def test_the_launcher_hands_start_over_to_its_workers():
    import argparse

    from projects.home.recap.commands.train import add_arguments, worker_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", "x.yaml", "--set", "a=1", "--nproc-per-node", "2", "--start-over"])
    assert worker_arguments(args) == ["train", "--config", "x.yaml", "--set", "a=1", "--start-over"]


def test_a_bad_label_in_a_validation_set_stops_the_run_before_its_first_step(data_dir, ctx, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from projects.home.recap.data.errors import DataError
    from projects.home.recap.train import train

    bad_dir = tmp_path / "data"
    shutil.copytree(data_dir, bad_dir)
    bad = sorted((bad_dir / "validation").glob("*.parquet"))[0]
    table = pq.read_table(bad)
    column = "recap.engagement.is_replied"
    labels = table[column].to_numpy().copy()
    labels[3] = 2
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(labels)), bad)
    assert pc.max(pq.read_table(bad)[column]).as_py() == 2
    # A checkpoint every 2 steps: had the run started, step 2 would be saved before the evaluation at step 4.
    config = helpers.config(bad_dir, tmp_path / "run", 8, eval_every_n=4, checkpoint_every_n=2,
                            eval_datasets="[validation]")
    with pytest.raises(DataError, match=rf"{bad.name}.*{column}.*1 labels outside \{{0, 1\}} \(first: 2"):
        train(config, ctx)
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_a_save_dir_that_cannot_be_written_is_one_clear_error(data_dir, ctx, tmp_path):
    from core.config import ConfigError
    from projects.home.recap.train import train

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"training.save_dir .*file/run: cannot write there \(Not a directory\)"):
        train(helpers.config(data_dir, tmp_path / "file" / "run", 2), ctx)


def test_a_second_run_on_a_save_dir_in_use_is_refused_naming_the_holder(data_dir, ctx, tmp_path):
    import os

    from core.config import ConfigError
    from core.run_lock import RunLock
    from projects.home.recap.train import train

    tmp_path.mkdir(exist_ok=True)
    holder = RunLock(tmp_path)
    holder.acquire()
    try:
        # flock locks belong to the open file: a second open in this process is refused like another process.
        with pytest.raises(ConfigError, match=rf"is in use by another run \(pid {os.getpid()} on .*choose another "
                                              r"training.save_dir"):
            train(helpers.config(data_dir, tmp_path, 2), ctx)
    finally:
        holder.release()
    assert train(helpers.config(data_dir, tmp_path, 2), ctx).step == 2  # free again
