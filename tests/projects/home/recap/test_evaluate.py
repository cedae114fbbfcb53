"""`recap evaluate` on a tiny trained run: exact metrics (equal to the metrics of the unsharded model's predictions),
reports with plots, TensorBoard scalars, clear errors, the Evaluator as the training loop's periodic evaluation,
and a 2-process torchrun evaluation equal to the single-process one (--watch: test_eval_watch.py)."""

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from core.distributed import DistributedContext  # noqa: E402
from core.metrics import METRIC_KEYS, compute_metrics  # noqa: E402
from core.ranking_metrics import ranking_block  # noqa: E402
from core.report import read_training_scalars  # noqa: E402
from projects.home.recap.data.loader import RecapDataLoader  # noqa: E402
from projects.home.recap.eval_groups import GroupColumn  # noqa: E402
from projects.home.recap.evaluate import Evaluator  # noqa: E402
from projects.home.recap.inference import load_for_inference  # noqa: E402
from projects.home.recap.main import main  # noqa: E402

TASKS = ["fav", "reply"]
LOCAL = DistributedContext(0, 1, 0, 1, torch.device("cpu"), "gloo")


@pytest.fixture(scope="module")
def run(trained_run):
    """(config file, save_dir) of the tiny trained run, evaluated once."""
    config_file, save_dir = trained_run
    assert main(["evaluate", "--config", str(config_file)]) == 0
    return config_file, save_dir


def reference_metrics(config, dataset: str) -> tuple[dict, bool]:
    """compute_metrics over the unsharded model's calibrated probabilities on every row of a validation set; and
    whether the batches carried oracle probabilities."""
    model = load_for_inference(config, "latest")
    loader = RecapDataLoader(config.data, config.data.validation[dataset], TASKS, "eval")
    parts: dict[str, list] = {"p": [], "y": [], "w": [], "s": [], "g": [], "r": []}
    oracles = []
    with torch.no_grad():
        for batch in loader:
            parts["p"].append(model(batch)[1]["calibrated_probabilities"])
            parts["y"].append(batch.labels)
            parts["w"].append(batch.weights)
            parts["s"].append(batch.discrete[:, :1])  # client_id
            parts["g"].append(batch.discrete[:, 2])  # hour_of_day
            parts["r"].append(torch.from_numpy(np.asarray(batch.ids["request_id"])))
            if batch.oracle is not None:
                oracles.append(batch.oracle)
    p, y, w, s, g, r = (torch.cat(v).numpy() for v in parts.values())
    oracle = torch.cat(oracles).numpy() if oracles else None
    tasks = compute_metrics(p, y, w, TASKS, s, ["client_id"], g, oracle)
    # The ranking block from the same predictions, by hand-picked settings of the test config.
    tasks["(ranking)"] = ranking_block(p, y, w, r, TASKS, (3, 5), [1.0, 5.0], "request_id")
    return tasks, oracle is not None


def assert_close_documents(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close_documents(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b, path


def test_evaluate_writes_exact_metrics_reports_and_tensorboard(run):
    config_file, save_dir = run
    config = helpers.load(config_file)
    assert sorted(p.name for p in (save_dir / "eval").iterdir()) == ["test", "validation"]
    scalars = read_training_scalars(save_dir)
    for dataset, rows in (("validation", 201), ("test", 202)):
        step_dir = save_dir / "eval" / dataset / f"step_{helpers.NUM_TRAIN_STEPS}"
        metrics = json.loads((step_dir / "metrics.json").read_text())
        assert (metrics["dataset"], metrics["step"]) == (dataset, helpers.NUM_TRAIN_STEPS)
        assert metrics["checkpoint"] == str(save_dir / "checkpoints" / "step_00000006")
        assert metrics["stratifiers"] == ["client_id"]
        expected, has_oracle = reference_metrics(config, dataset)
        assert_close_documents(metrics["ranking"], expected.pop("(ranking)"))
        # Generated requests of 8 candidates: 201 rows are 26 requests (the split starts mid-request).
        assert metrics["ranking"]["requests"] in (26, 27) and metrics["ranking"]["k"] == [3, 5]
        assert metrics["ranking"]["score"]["requests@3"] > 0
        assert "gates" not in metrics  # share_all: no expert mixture
        for task in TASKS:
            block = metrics["tasks"][task]
            assert block["rows"] == rows
            for key in (*METRIC_KEYS, "group_auc"):
                assert block[key] is not None and math.isfinite(block[key]), (dataset, task, key)
            assert ("oracle" in block) == has_oracle
            assert set(block["strata"]["client_id"]) == set(expected[task]["strata"]["client_id"])
        assert_close_documents(metrics["tasks"], expected)
        curves = json.loads((step_dir / "curves.json").read_text())
        assert set(curves["tasks"]) == set(TASKS) and curves["tasks"]["fav"]["roc"]
        html = (step_dir / "report.html").read_text()
        for task in TASKS:
            for chart in ("ROC", "Precision-recall", "Reliability", "Scores"):
                assert f'class="chart-title">{chart} — {task}<' in html
        assert 'id="training"' in html and "train/loss" in html
        markdown = (step_dir / "report.md").read_text()
        assert markdown.count("| fav |") >= 2  # the metrics table and the ranking table
        assert "### Ranking per request" in markdown and "| score |" in markdown
        assert "<h3>Ranking per request</h3>" in html
        ndcg = dict(scalars[f"eval/{dataset}/ranking/score/ndcg@5"])[helpers.NUM_TRAIN_STEPS]
        assert ndcg == pytest.approx(metrics["ranking"]["score"]["ndcg@5"], rel=1e-6)
        auc = dict(scalars[f"eval/{dataset}/fav/auc"])[helpers.NUM_TRAIN_STEPS]
        assert auc == pytest.approx(metrics["tasks"]["fav"]["auc"], rel=1e-6)
        loss = dict(scalars[f"eval/{dataset}/loss"])[helpers.NUM_TRAIN_STEPS]
        assert loss == pytest.approx(sum(metrics["tasks"][t]["logloss"] for t in TASKS), rel=1e-6)


def test_evaluate_logs_its_progress_without_a_terminal(run, monkeypatch, caplog):
    """Without a TTY `recap evaluate` logs rows done, rows/s and the ETA every RECAP_PROGRESS_SECONDS."""
    config_file, _ = run
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("RECAP_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO)
    assert main(["evaluate", "--config", str(config_file), "--dataset", "validation"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "core.progress"]
    assert lines and all(line.startswith("evaluating validation: ") and "rows/s, ETA" in line for line in lines)
    assert lines[-1].startswith("evaluating validation: 201/201 rows (100%)")


def test_bad_checkpoint_label_column_and_dataset_fail_clearly(run, data_dir, tmp_path, capsys):
    config_file, save_dir = run
    missing = tmp_path / "nowhere" / "step_00000009"
    assert main(["evaluate", "--config", str(config_file), "--checkpoint", str(missing)]) == 1
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err

    table = pq.read_table(data_dir / "test")
    label = helpers.LABEL_PREFIX + "is_replied"
    pq.write_table(table.drop_columns([label]), tmp_path / "no_label.parquet")
    argv = ["evaluate", "--config", str(config_file), "--dataset", "test",
            "--set", f"data.validation.test.paths=[{tmp_path / 'no_label.parquet'}]"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "no_label.parquet") in err and f"column {label!r}: missing column" in err

    assert main(["evaluate", "--config", str(config_file), "--dataset", "holdout"]) == 1
    assert "data.validation has no dataset ['holdout']" in capsys.readouterr().err


def test_evaluator_uses_oracle_stratifiers_string_groups_and_max_batches(run):
    """Hand-made batches through the Evaluator equal compute_metrics on the same rows."""
    config_file, _ = run
    config = helpers.load(config_file)
    model = load_for_inference(config, "latest")
    loader = RecapDataLoader(config.data, config.data.validation["validation"], TASKS, "eval", batch_size=40)
    batches = []
    g = torch.Generator().manual_seed(0)
    for batch in loader:
        batch.oracle = torch.rand(batch.batch_size, 2, generator=g)
        batch.ids["user"] = np.array([f"u{i % 7}" for i in batch.ids["impression_id"]], dtype=object)
        batches.append(batch)
    evaluator = Evaluator(model, {"valid": batches}, TASKS, LOCAL, stratifiers={"hour": 2},
                          group_column=GroupColumn("user"), curve_points=10, max_batches=3)
    documents = evaluator.evaluate(step=4)
    used = batches[:3]
    with torch.no_grad():
        p = torch.cat([model(b)[1]["calibrated_probabilities"] for b in used]).numpy()
    expected = compute_metrics(
        p, torch.cat([b.labels for b in used]).numpy(), torch.cat([b.weights for b in used]).numpy(), TASKS,
        torch.cat([b.discrete[:, 2:3] for b in used]).numpy(), ["hour"],
        np.concatenate([[f"u{i % 7}" for i in b.ids["impression_id"]] for b in used]),
        torch.cat([b.oracle for b in used]).numpy(),
    )
    assert documents["valid"]["step"] == 4 and documents["valid"]["tasks"]["fav"]["rows"] == 120
    assert "oracle" in documents["valid"]["tasks"]["fav"] and "group_auc" in documents["valid"]["tasks"]["fav"]
    assert_close_documents(documents["valid"]["tasks"], expected)
    assert model.training is False


def test_the_evaluator_runs_as_the_training_loops_periodic_evaluation(data_dir, tmp_path):
    """Training evaluates training.eval_datasets every eval_every_n steps with the Evaluator: reports at every eval
    step, TensorBoard scalars, and training goes on in train mode; the test set stays out."""
    config_file = helpers.write_config(tmp_path / "experiment.yaml", data_dir, tmp_path / "save",
                                       training={"eval_every_n": 3, "num_eval_steps": 1,
                                                 "eval_datasets": ["validation", "single"]})
    helpers.train_run(config_file)
    scalars = read_training_scalars(tmp_path / "save")
    assert not (tmp_path / "save" / "eval" / "test").exists() and "eval/test/loss" not in scalars
    for dataset in ("validation", "single"):
        for step in (3, 6):
            metrics = json.loads((tmp_path / "save" / "eval" / dataset / f"step_{step}" / "metrics.json").read_text())
            # One collective step of 50-row eval batches.
            assert metrics["tasks"]["fav"]["rows"] == (1 if dataset == "single" else 50)
        assert [s for s, _ in scalars[f"eval/{dataset}/loss"]] == [3, 6]
    assert [s for s, _ in scalars["eval/validation/fav/rce"]] == [3, 6]
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_evaluator_runs_the_model_in_eval_mode_without_gradients_under_bf16_autocast(run):
    config_file, _ = run
    config = helpers.load(config_file)
    model = load_for_inference(config, "latest").train()
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, batch):
            seen.append((self.training, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
            return self.inner(batch)

    batches = list(RecapDataLoader(config.data, config.data.validation["test"], TASKS, "eval"))
    wrapped = Recording()
    for bf16 in (True, False):
        Evaluator(wrapped, {"test": batches}, TASKS, LOCAL, bf16=bf16).evaluate(step=1)
        assert seen == [(False, False, bf16)] * len(batches)
        assert wrapped.training is True  # restored for training
        seen.clear()


@pytest.mark.slow
def test_two_process_torchrun_evaluation_equals_the_single_process_one(run, tmp_path):
    """Rank 0 has 2 validation batches and rank 1 has 3; of the 1-row set, rank 0 has none and pads throughout."""
    config_file, save_dir = run
    single = tmp_path / "single_process"
    argv = ["evaluate", "--config", str(config_file), "--checkpoint", str(save_dir), "--dataset", "single",
            "--set", f"training.save_dir={single}"]
    assert main(argv) == 0
    done = helpers.recap("evaluate", "--config", str(config_file), "--checkpoint", str(save_dir),
                         "--dataset", "validation", "--dataset", "single", "--set",
                         f"training.save_dir={tmp_path / 'two'}", torchrun=2)
    assert done.returncode == 0, done.stderr[-4000:]
    for dataset, reference in (("validation", save_dir), ("single", single)):
        ours = json.loads((tmp_path / "two" / "eval" / dataset / "step_6" / "metrics.json").read_text())
        theirs = json.loads((reference / "eval" / dataset / "step_6" / "metrics.json").read_text())
        assert ours["tasks"]["fav"]["rows"] == (201 if dataset == "validation" else 1)
        assert_close_documents(ours, theirs)


def test_curve_points_and_an_id_column_for_group_auc_come_from_the_config(run, data_dir, tmp_path):
    """evaluation.curve_points thins every curve in curves.json; evaluation.group_auc_column may name an id column
    (here a session id repeated across rows) and gives a finite grouped AUC."""
    import pyarrow as pa

    config_file, save_dir = run
    table = pq.read_table(data_dir / "validation")
    grouped = tmp_path / "grouped"
    grouped.mkdir()
    pq.write_table(table.append_column("session", pa.array(table["impression_id"].to_numpy() % 4)),
                   grouped / "part.parquet")
    curve_lengths = {}
    for points in (10, 40):
        out = tmp_path / f"points_{points}"
        assert main(["evaluate", "--config", str(config_file), "--checkpoint", str(save_dir), "--dataset", "grouped",
                     "--set", f"data.validation.grouped.paths=[{grouped}]",
                     "--set", "data.features.ids=[impression_id, request_id, session]",
                     "--set", "evaluation.group_auc_column=session",
                     "--set", f"evaluation.curve_points={points}", "--set", f"training.save_dir={out}"]) == 0
        step_dir = out / "eval" / "grouped" / f"step_{helpers.NUM_TRAIN_STEPS}"
        fav = json.loads((step_dir / "metrics.json").read_text())["tasks"]["fav"]
        assert fav["group_auc"] is not None and math.isfinite(fav["group_auc"])
        curves = json.loads((step_dir / "curves.json").read_text())["tasks"]
        curve_lengths[points] = [len(values) for task in curves.values() for curve in ("roc", "pr")
                                 if task[curve] is not None for values in task[curve].values()]
    assert curve_lengths[10] and max(curve_lengths[10]) == 10
    assert max(curve_lengths[40]) == 40  # 201 rows have more distinct scores than either limit


def test_build_evaluator_takes_the_training_precision(run):
    from projects.home.recap.evaluate import build_evaluator

    config_file, _ = run
    for precision, bf16 in (("bf16", True), ("fp32", False)):
        config = helpers.load(config_file, [f"training.mixed_precision={precision}"])
        assert build_evaluator(config, torch.nn.Identity(), LOCAL, TASKS, loaders={}).bf16 is bf16


def test_expert_gates_are_in_metrics_the_report_and_tensorboard(data_dir, tmp_path):
    config_file = helpers.write_config(
        tmp_path / "mmoe.yaml", data_dir, tmp_path / "save",
        model={"multi_task_type": "mmoe", "mixture": {"num_experts": 3},
               "backbone": {"mlp_config": {"layer_sizes": [8, 6]}}},
        training={"num_train_steps": 3, "checkpoint_every_n": 3},
    )
    save_dir = helpers.train_run(config_file)
    assert main(["evaluate", "--config", str(config_file), "--dataset", "validation"]) == 0
    step_dir = save_dir / "eval" / "validation" / "step_3"
    gates = json.loads((step_dir / "metrics.json").read_text())["gates"]
    assert list(gates) == ["fav", "reply"]
    config = helpers.load(config_file)
    model = load_for_inference(config, "latest")
    loader = RecapDataLoader(config.data, config.data.validation["validation"], TASKS, "eval")
    with torch.no_grad():
        weights = torch.cat([model(batch)[1]["gates/fav"] for batch in loader]).double()
    fav = gates["fav"]
    assert fav["rows"] == 201 and fav["max_entropy"] == pytest.approx(math.log(3))
    assert fav["mean_weights"] == pytest.approx(weights.mean(0).tolist(), rel=1e-6)
    assert sum(fav["mean_weights"]) == pytest.approx(1.0)
    entropy = -(weights * weights.log()).sum(1).mean().item()
    assert fav["mean_entropy"] == pytest.approx(entropy, rel=1e-6)
    assert 0 < fav["mean_entropy"] <= fav["entropy_of_mean"] <= math.log(3) + 1e-9
    assert "### Expert gates" in (step_dir / "report.md").read_text()
    scalars = read_training_scalars(save_dir)
    assert dict(scalars["eval/validation/gates/fav/entropy_of_mean"])[3] == pytest.approx(fav["entropy_of_mean"])
    assert dict(scalars["eval/validation/gates/reply/weight_2"])[3] == pytest.approx(gates["reply"]["mean_weights"][2])
