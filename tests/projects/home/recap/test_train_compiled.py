"""Training with training.compile on: exact resume, checkpoints that move between eager and compiled runs, evaluation
with a compiled model, and a real 2-process run. The demo model with a small MLP backbone keeps compiling short; the
exact resume compiles with inductor (its graphs draw their own random numbers), the other tests with aot_eager (the
same traced graphs without code generation: what they check does not depend on the generated kernels)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from projects.home.recap.schema import load_recap_config  # noqa: E402

data_dir, ctx = helpers.data_dir, helpers.ctx  # the module's fixtures

SMALL_BACKBONE = "model.backbone={mlp_config: {layer_sizes: [16]}}"


def values(data_dir: Path, save_dir: Path, steps: int, target: str = "dense", backend: str = "aot_eager",
           **training) -> list[str]:
    compiled = [f"training.compile.backend={backend}"] if target != "off" else []
    return helpers.overrides(data_dir, save_dir, steps, **training) + [
        SMALL_BACKBONE, f"training.compile.target={target}", *compiled]


def config(data_dir: Path, save_dir: Path, steps: int, target: str = "dense", backend: str = "aot_eager",
           **training):
    return load_recap_config(helpers.DEMO, values(data_dir, save_dir, steps, target, backend, **training))


@pytest.mark.slow
def test_compiled_stop_and_resume_gives_the_parameters_of_a_straight_run(data_dir, ctx, tmp_path, caplog):
    from projects.home.recap.train import train

    with caplog.at_level("INFO", logger="core.compile"):
        straight = train(config(data_dir, tmp_path / "straight", 8, "dense+loss", "inductor"), ctx)
    assert "torch.compile: training step 1 built" in caplog.text
    first = train(config(data_dir, tmp_path / "resumed", 4, "dense+loss", "inductor"), ctx)
    torch.manual_seed(99)  # the resumed run restores every random generator it uses, the compiled graphs' too
    resumed = train(config(data_dir, tmp_path / "resumed", 8, "dense+loss", "inductor"), ctx)
    assert (straight.step, first.step, resumed.step) == (8, 4, 8)
    assert resumed.resumed_from == tmp_path / "resumed" / "checkpoints" / "step_00000004"
    unused = config(data_dir, tmp_path / "unused", 1, "off")
    a = helpers.checkpoint_state(unused, ctx, straight.checkpoint)
    b = helpers.checkpoint_state(unused, ctx, resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.endswith("exp_avg_sq") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")


@pytest.mark.slow
def test_checkpoints_move_between_eager_and_compiled_runs_and_evaluation_compiles(data_dir, ctx, tmp_path):
    from projects.home.recap.evaluate import evaluate_checkpoint
    from projects.home.recap.train import train

    run = tmp_path / "run"
    assert train(config(data_dir, run, 4, "off"), ctx).step == 4
    compiled = train(config(data_dir, run, 8, "dense"), ctx)  # eager checkpoint -> compiled run
    assert (compiled.step, compiled.resumed_from.name) == (8, "step_00000004")
    eager = train(config(data_dir, run, 12, "off"), ctx)  # compiled checkpoint -> eager run
    assert (eager.step, eager.resumed_from.name) == (12, "step_00000008")
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [8, 10, 12]  # keep_last_k 3

    # `recap evaluate` with a compiled model scores as the eager model does (eval batches of 100: 201 rows end in a
    # one-row batch, a graph of its own).
    results = {}
    for target in ("off", "dense"):
        _, documents = evaluate_checkpoint(config(data_dir, run, 12, target), None, ["validation"], ctx)
        results[target] = documents["validation"]["tasks"]
    for task, block in results["off"].items():
        assert block["rows"] == results["dense"][task]["rows"] == 201
        assert results["dense"][task]["logloss"] == pytest.approx(block["logloss"], rel=1e-5), task


@pytest.mark.slow
def test_two_process_compiled_training_checkpoints_and_evaluates(data_dir, tmp_path):
    save_dir = tmp_path / "run"
    done = helpers.recap("train", "--nproc-per-node", "2", "--config", str(helpers.DEMO),
                         *helpers.set_args(values(data_dir, save_dir, 12, "dense", eval_every_n=12,
                                                  eval_datasets="[validation]")), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "sharding plan for 2 rank(s)" in done.stderr
    assert "torch.compile: training step 1 built" in done.stderr
    assert [c.step for c in list_checkpoints(save_dir / "checkpoints")] == [10, 12]
    metrics = json.loads((save_dir / "eval" / "validation" / "step_12" / "metrics.json").read_text())
    assert {block["rows"] for block in metrics["tasks"].values()} == {201}
