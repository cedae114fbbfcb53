"""gpu-check stages beyond throughput: the environment, the evaluator's metrics on GPU outputs, an export of a model
trained on the GPU scored on CPU, and the CUDA-marked tests. None of them imports torchrec or fbgemm."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from common.batch import RecapBatch
from core.metrics_accumulator import MetricsAccumulator
from projects.home.recap.gpu_check.dense import DenseBatch, build_dense, dense_batch, load_config
from projects.home.recap.gpu_check.gpu import float32_matmul_precision

REPO = Path(__file__).resolve().parents[4]
# GPU and CPU evaluate the same float32 numbers; only summation order differs.
METRICS_TOLERANCE = 1e-4
# The exported program on CPU against the same model on the GPU (fp32 matmuls, no tf32), probabilities and logits.
EXPORT_TOLERANCE = 1e-4


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


_IMPORT_CHECK = """
import importlib, json
found = {}
for name in ("fbgemm_gpu", "torchrec"):
    try:
        found[name] = "ok " + str(getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        found[name] = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps(found))
"""


def _sparse_imports(timeout: float = 30.0) -> dict[str, str]:
    """{module: "ok <version>" or why it does not import} for fbgemm_gpu and torchrec, checked in a child (a
    broken extension may crash the process that loads it)."""
    try:
        done = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"fbgemm_gpu": f"importing took over {timeout:.0f} s", "torchrec": "not checked"}
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]
        return {"fbgemm_gpu": f"the import check crashed: {why}", "torchrec": "not checked"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(out: Path) -> dict[str, Any]:
    """Device, driver-side versions and the optional sparse stack."""
    props = torch.cuda.get_device_properties(0)
    nccl = None
    with_nccl = getattr(torch.cuda, "nccl", None)
    if with_nccl is not None and torch.distributed.is_nccl_available():
        version = with_nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    results = {
        "device": props.name,
        "device_count": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": nccl,
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("numpy", "pyarrow", "pydantic", "PyYAML", "tensorboard", "tqdm",
                                               "pytest", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu")},
        "imports": _sparse_imports(),
    }
    headline = (f"{props.name} (sm_{props.major}{props.minor}, {results['memory_gib']} GiB), torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}; torchrec: {results['imports']['torchrec']}")
    return {"headline": headline, "results": results}


def _numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a metrics document, by its path."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _numbers(value, f"{prefix}/{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, value in enumerate(doc) for k, v in _numbers(value, f"{prefix}[{i}]").items()}
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return {prefix: float(doc)}
    return {}


def _max_difference(a: dict, b: dict) -> tuple[float, str]:
    left, right = _numbers(a), _numbers(b)
    if left.keys() != right.keys():
        raise AssertionError(f"the documents differ in keys: {sorted(left.keys() ^ right.keys())[:5]}")
    worst, where = 0.0, ""
    for key, x in left.items():
        y = right[key]
        if math.isnan(x) and math.isnan(y):
            continue
        diff = abs(x - y) / max(1.0, abs(y))
        if not diff <= worst:  # also catches a NaN on one side only
            worst, where = (diff if not math.isnan(diff) else math.inf), key
    return worst, where


def evaluator_metrics_stage(out: Path, device: str = "cuda", batches: int = 8, batch_size: int = 4096) -> dict:
    """The evaluator's MetricsAccumulator (AUC, log loss, calibration, stratified and per-request metrics) kept on
    the GPU, against the same outputs accumulated on CPU."""
    import time

    config = load_config("demo")
    torch.manual_seed(0)
    model = build_dense(config).to(device).eval()
    tasks = model.task_names
    on_gpu, on_cpu = MetricsAccumulator(storage_device=device), MetricsAccumulator()
    gpu_seconds = 0.0
    for i in range(batches):
        batch = dense_batch(config, model, batch_size, device, seed=i)
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            outputs = model(*batch.inputs)
        predictions = outputs["calibrated_probabilities"]
        # Labels drawn from the model's own probabilities: the metrics then have something to find.
        labels = torch.bernoulli(predictions, generator=torch.Generator(device=device).manual_seed(i))
        stratifiers = batch.discrete[:, :1]
        requests = torch.arange(batch_size, device=device) // 16 + i * batch_size
        start = time.perf_counter()
        on_gpu.update(predictions, labels, batch.weights, stratifiers=stratifiers, request_ids=requests)
        gpu_seconds += time.perf_counter() - start
        on_cpu.update(predictions.cpu(), labels.cpu(), batch.weights.cpu(), stratifiers=stratifiers.cpu(),
                      request_ids=requests.cpu())
    kwargs = dict(dataset="synthetic", step=0, ndcg_ks=[5, 10], score_weights=config.model.score_weights(),
                  request_column="request")
    start = time.perf_counter()
    gpu_metrics = on_gpu.compute(tasks, ["stratum"], **kwargs)
    gpu_seconds += time.perf_counter() - start
    cpu_metrics = on_cpu.compute(tasks, ["stratum"], **kwargs)
    difference, where = _max_difference(gpu_metrics, cpu_metrics)
    if not difference <= METRICS_TOLERANCE:
        raise AssertionError(f"GPU and CPU metrics differ by {difference:.3g} at {where} (> {METRICS_TOLERANCE})")
    auc = [gpu_metrics["tasks"][t].get("auc") for t in tasks]
    rows = batches * batch_size
    return {
        "headline": f"{rows:,} rows, {len(tasks)} tasks: GPU = CPU within {difference:.1g}; "
                    f"mean AUC {sum(a for a in auc if a is not None) / max(1, len(auc)):.3f}",
        "results": {"rows": rows, "max_relative_difference": difference, "gpu_seconds": round(gpu_seconds, 3),
                    "auc": dict(zip(tasks, auc))},
    }


def _recap_batch(batch: DenseBatch) -> RecapBatch:
    return RecapBatch(batch.continuous, batch.binary, batch.discrete, None, batch.embeddings, batch.labels,
                      batch.weights)


def export_stage(out: Path, device: str = "cuda", steps: int = 20, batch_size: int = 512) -> dict[str, Any]:
    """Train the demo model without large tables for a few steps on the GPU (bf16 autocast), export it, load the
    artifact on CPU and compare its outputs with the GPU model's on the same rows."""
    from projects.home.recap.model.factory import build_model_and_loss
    from projects.home.recap.serving.export import export_serving_artifact
    from projects.home.recap.serving.score_example import load_artifact

    config = load_config("demo", ["model.large_embeddings=[]"])
    torch.manual_seed(0)
    model_and_loss = build_model_and_loss(config).to(device).train()
    optimizer = torch.optim.Adam(model_and_loss.parameters(), lr=1e-3)
    dense = model_and_loss.model.dense
    batches = [dense_batch(config, dense, batch_size, device, seed) for seed in range(4)]
    for step in range(steps):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            loss, _ = model_and_loss(_recap_batch(batches[step % len(batches)]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model = model_and_loss.model.eval()
    rows = dense_batch(config, dense, 1000, device, seed=99)
    with torch.no_grad(), float32_matmul_precision("highest"):
        expected = {k: v.cpu() for k, v in model(_recap_batch(rows)).items()}
    artifact = export_serving_artifact(model.cpu(), config, out / "export", overwrite=True)
    program, metadata = load_artifact(artifact)
    with torch.no_grad():
        got = program(rows.continuous.cpu(), rows.binary.cpu(), rows.discrete.cpu(), rows.embeddings.cpu(), [], [])
    differences = {}
    for key in ("logits", "probabilities", "calibrated_probabilities", "score"):
        if key in expected:
            scale = max(1.0, float(expected[key].abs().max()))
            differences[key] = float((got[key] - expected[key]).abs().max()) / scale
    worst = max(differences, key=differences.get)
    if not differences[worst] <= EXPORT_TOLERANCE:
        raise AssertionError(f"the exported program on CPU differs from the GPU model in {worst} by "
                             f"{differences[worst]:.3g} (relative to the largest value; > {EXPORT_TOLERANCE})")
    return {
        "headline": f"trained {steps} steps on GPU, exported to {artifact}, CPU scores = GPU within "
                    f"{differences[worst]:.1g}",
        "results": {"artifact": str(artifact), "relative_differences": differences, "rows": 1000,
                    "final_train_loss": round(float(loss.detach()), 5)},
    }


def cuda_test_files() -> list[str]:
    """The test files that use the cuda marker, relative to the repository."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "mark.cuda" in p.read_text(errors="replace"))


def cuda_tests_stage(out: Path, timeout: float = 55.0) -> dict[str, Any]:
    """pytest -m cuda over cuda_test_files() (only those: other files may import torchrec)."""
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("pytest is not importable: prepare the wheel folder with `make gpu-wheels` "
                           "and run through `make gpu-check`, which installs it")
    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test file carries the cuda marker")
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    (out / "logs" / "cuda_tests.pytest.log").write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    if done.returncode != 0 or not counts.get("passed"):
        raise AssertionError(f"pytest -m cuda: {summary} (exit status {done.returncode}; "
                             f"see {out / 'logs' / 'cuda_tests.pytest.log'})")
    return {"headline": summary.strip("= "), "results": {"files": files, "counts": counts}}
