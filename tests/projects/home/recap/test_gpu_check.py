"""gpu-check without a GPU: the probe says "no CUDA device" and does nothing else; the orchestrator records failed,
timed-out and skipped stages in summary.json and keeps going; the stages' code runs on CPU (metrics, export, the
sparse training with resume and evaluation); the CUDA tests are found by their marker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from projects.home.recap.gpu_check import runner
from projects.home.recap.gpu_check.checks import cuda_test_files, evaluator_metrics_stage, export_stage

REPO = Path(__file__).resolve().parents[4]


def _gpu_check(*args: str, code: str = "") -> subprocess.CompletedProcess:
    program = code + "from projects.home.recap.gpu_check.runner import main; raise SystemExit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", "import sys\n" + program, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_does_nothing(tmp_path):
    done = _gpu_check("--out", str(tmp_path / "check"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA device: torch ")
    assert "torch.cuda.is_available() is False" in done.stdout
    assert not (tmp_path / "check").exists()


def test_without_torch_it_says_so_and_does_nothing(tmp_path):
    done = _gpu_check("--out", str(tmp_path / "check"), code="sys.modules['torch'] = None\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA device: ") and "cannot import torch" in done.stdout
    assert not (tmp_path / "check").exists()


def test_failures_and_time_outs_are_recorded_and_the_other_stages_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "probe", lambda: None)
    monkeypatch.setattr(runner, "STAGES", (
        runner.Stage("no_such_stage", 60, "a stage that fails"),
        runner.Stage("matmul_peak", 0.01, "a stage that cannot finish in its time box"),
        runner.Stage("evaluator_metrics", 120, "a stage that runs after them"),
        runner.Stage("sparse_adam", 120, "a stage that skips where NCCL is missing"),
    ))
    monkeypatch.setattr(runner, "TOTAL_SECONDS", 200.0)
    assert runner.main(["--out", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["no_such_stage"]["status"] == "failed"
    assert "no gpu-check stage 'no_such_stage'" in stages["no_such_stage"]["reason"]
    assert stages["matmul_peak"]["status"] == "timed_out"
    # Without CUDA the third stage fails too, but it ran, in its own process, with its own log.
    assert stages["evaluator_metrics"]["status"] in ("ok", "failed")
    assert Path(stages["evaluator_metrics"]["log"]).exists()
    if not torch.distributed.is_nccl_available():
        assert stages["sparse_adam"]["status"] == "skipped"
        assert summary["skipped"] == {"sparse_adam": "this torch build has no NCCL"}
    assert summary["failed"][:2] == ["no_such_stage", "matmul_peak"]
    assert summary["ok"] is False
    printed = capsys.readouterr().out
    assert "FAILED: no_such_stage, matmul_peak" in printed


def test_stages_past_the_total_time_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "probe", lambda: None)
    monkeypatch.setattr(runner, "STAGES", (runner.Stage("environment", 60, "never started"),))
    monkeypatch.setattr(runner, "TOTAL_SECONDS", 0.0)
    assert runner.main(["--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["environment"]["status"] == "skipped"
    assert "out of time" in summary["skipped"]["environment"]


def test_metrics_and_export_stages_run_on_cpu(tmp_path):
    (tmp_path / "logs").mkdir()
    metrics = evaluator_metrics_stage(tmp_path, device="cpu", batches=2, batch_size=256)
    assert metrics["results"]["max_relative_difference"] <= 1e-4
    exported = export_stage(tmp_path, device="cpu", steps=2, batch_size=64)
    assert max(exported["results"]["relative_differences"].values()) <= 1e-4
    assert (tmp_path / "export" / "metadata.json").exists()


def test_sparse_stage_trains_resumes_and_evaluates_on_cpu(tmp_path):
    from projects.home.recap.gpu_check.sparse import FIRST_STEPS, RESUMED_STEPS

    # In a child process: it initializes its own process group, as the stage does on the GPU box.
    code = ("import json, sys; from pathlib import Path; from projects.home.recap.gpu_check.sparse import "
            "sparse_stage; print(json.dumps(sparse_stage(Path(sys.argv[1]), 'adagrad', device='cpu')))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"trained {FIRST_STEPS}, resumed to {RESUMED_STEPS}" in result["headline"]
    assert result["results"]["final_checkpoint"].endswith(f"step_{RESUMED_STEPS:08d}")
    assert any(v is not None for v in result["results"]["auc"].values())


def test_the_cuda_tests_are_found_by_their_marker():
    files = cuda_test_files()
    assert "tests/projects/home/recap/model/test_dense_cuda.py" in files
    assert all(f.startswith("tests/") for f in files)
