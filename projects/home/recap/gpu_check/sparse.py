"""The sparse stages of gpu-check: where fbgemm-gpu and torchrec import, the demo model with small tables trained
sharded on cuda:0 with NCCL (one process, world size 1) with one table optimizer, through the training loop's
torchrec train pipeline; a checkpoint, a resume to a later step, evaluation mid-run and of the final checkpoint."""

from __future__ import annotations

import importlib
import logging
import shutil
from pathlib import Path
from typing import Any

from projects.home.recap.gpu_check.stage_record import Skip

ROWS = 4020  # as the training tests: 3618 train, 201 validation, 201 test rows
FIRST_STEPS, RESUMED_STEPS = 12, 18
# The demo's rate suits rowwise_adagrad; the others get rates of their own scale.
LEARNING_RATES = {"sgd": 0.5, "adagrad": 0.05, "rowwise_adagrad": 0.05, "adam": 0.001}


def check_sparse_stack(device: str = "cuda") -> None:
    """Raise Skip naming why sharded training cannot run here (no fbgemm-gpu / torchrec, no NCCL)."""
    import torch.distributed as dist

    from core.distributed import quiet_library_logging

    quiet_library_logging()  # before fbgemm loads: it logs every library it opens

    for module in ("fbgemm_gpu", "torchrec"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # an ABI mismatch shows as OSError or RuntimeError, not only ImportError
            raise Skip(f"{module} does not import ({type(exc).__name__}: {str(exc)[:200]}); "
                       "the dense stages check everything after the sparse lookup") from None
    if device == "cuda" and not dist.is_nccl_available():
        raise Skip("this torch build has no NCCL")


def _overrides(data: Path, save_dir: Path, optimizer: str, steps: int) -> list[str]:
    values = {
        "data.train.paths": f"[{data}/train]",
        "data.validation.validation.paths": f"[{data}/validation]",
        "data.validation.test.paths": f"[{data}/test]",
        "data.batch_size": 64,
        "data.eval_batch_size": 100,
        "data.num_workers": 0,
        "data.shuffle_buffer_rows": 256,
        "model.large_embeddings.0.num_embeddings": 5000,
        "model.large_embeddings.1.num_embeddings": 3000,
        "model.large_embeddings.2.num_embeddings": 2000,
        "optimizer.sparse.type": optimizer,
        "optimizer.sparse.learning_rate": LEARNING_RATES[optimizer],
        "optimizer.dense.learning_rate": "{constant: 0.001}",
        "training.save_dir": str(save_dir),
        "training.num_epochs": "null",
        "training.num_train_steps": steps,
        "training.train_log_every_n": 6,
        "training.checkpoint_every_n": 6,
        "training.eval_every_n": 6,
        "training.num_eval_steps": 2,
        "training.eval_datasets": "[validation]",
        "training.mixed_precision": "bf16",
        "evaluation.datasets": "[validation]",
    }
    return [f"{k}={v}" for k, v in values.items()]


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def sparse_stage(out: Path, optimizer: str, device: str = "cuda") -> dict[str, Any]:
    """Train FIRST_STEPS steps, resume to RESUMED_STEPS, evaluate the final checkpoint; all on cuda:0 (device
    "cpu" runs the same with gloo and without the pipeline, for tests)."""
    if optimizer not in LEARNING_RATES:
        raise ValueError(f"unknown sparse optimizer {optimizer!r}; expected one of {', '.join(LEARNING_RATES)}")
    check_sparse_stack(device)
    from core.distributed import init_distributed
    from projects.home.recap.data.synthetic import generate
    from projects.home.recap.evaluate import evaluate_checkpoint
    from projects.home.recap.gpu_check.dense import CONFIG_DIR
    from projects.home.recap.schema import load_recap_config
    from projects.home.recap.train import train

    work = out / "sparse" / optimizer
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    generate(data, ROWS, seed=3, rows_per_file=1000, row_group_size=250)
    ctx = init_distributed(device)
    if ctx.device.type == "cuda" and ctx.backend != "nccl":
        raise RuntimeError(f"expected an NCCL process group on cuda, got {ctx.backend} on {ctx.device}")
    messages = _Messages()
    logging.getLogger("core.train_pipeline").addHandler(messages)

    def config(steps: int):
        overrides = _overrides(data, work / "run", optimizer, steps) + [f"training.device={device}"]
        return load_recap_config(CONFIG_DIR / "demo.yaml", overrides)

    first = train(config(FIRST_STEPS), ctx)
    if first.step != FIRST_STEPS or first.checkpoint is None:
        raise AssertionError(f"the first run ended at step {first.step} with checkpoint {first.checkpoint}")
    resumed = train(config(RESUMED_STEPS), ctx)
    if resumed.resumed_from != first.checkpoint or resumed.step != RESUMED_STEPS:
        raise AssertionError(f"the second run resumed from {resumed.resumed_from} (expected {first.checkpoint}) "
                             f"and ended at step {resumed.step} (expected {RESUMED_STEPS})")
    checkpoint, documents = evaluate_checkpoint(config(RESUMED_STEPS), None, ["validation"], ctx)
    pipelined = any("TrainPipelineSparseDist" in line for line in messages.lines)
    fallback = [line for line in messages.lines if "without torchrec's train pipeline" in line]
    if ctx.device.type == "cuda" and not pipelined:
        raise AssertionError(f"the training loop did not use torchrec's train pipeline on CUDA: {fallback}")
    tasks = documents["validation"]["tasks"]
    auc = {t: m.get("auc") for t, m in tasks.items()}
    losses = [first.last_train_metrics.get("train/loss"), resumed.last_train_metrics.get("train/loss")]
    return {
        "headline": f"{optimizer}: trained {FIRST_STEPS}, resumed to {RESUMED_STEPS} through the train pipeline, "
                    f"evaluated {checkpoint.path.name}; losses {losses[0]:.3f} -> {losses[1]:.3f}",
        "results": {
            "train_losses": losses,
            "eval_during_training": sorted(resumed.last_eval_metrics)[:3],
            "final_checkpoint": str(checkpoint.path),
            "auc": auc,
            "train_pipeline": pipelined,
        },
    }
