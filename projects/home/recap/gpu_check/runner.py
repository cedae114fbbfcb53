"""The gpu-check orchestrator: probe for CUDA, run each stage in a time-boxed subprocess, write summary.json.

Each stage writes OUT/stages/<name>.json ({"status": "ok" | "skipped" | "failed", ...}); its output goes to
OUT/logs/<name>.log. A stage that exceeds its time box is killed and recorded as "timed_out"; one that dies without
writing its JSON is "failed" with the tail of its log. All stages together stay within TOTAL_SECONDS: a stage that
would start after that is "skipped". The exit status is 1 when any stage failed or timed out, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[4]
DEFAULT_OUT = "runs/gpu-check"
# The whole check must finish within 8 minutes; the stages share this much of it (the rest is start-up slack).
TOTAL_SECONDS = 450.0
SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
BAD = ("failed", "timed_out")


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float  # its time box
    what: str


STAGES = (
    Stage("environment", 45, "torch, CUDA and device facts; whether torchrec and fbgemm-gpu import"),
    Stage("matmul_peak", 40, "the best matmul TFLOP/s in fp32, tf32 and bf16 (the MFU denominators)"),
    Stage("dense_train", 100, "demo and recap_scale dense models: fp32 and bf16 training steps, examples/s, MFU"),
    Stage("evaluator_metrics", 40, "the evaluator's MetricsAccumulator on GPU outputs, against the same on CPU"),
    Stage("export", 50, "a model trained on the GPU, exported, scored on CPU and compared with the GPU outputs"),
    Stage("cuda_tests", 60, "pytest -m cuda on the test files that carry the cuda marker"),
    *(Stage(f"sparse_{o}", 60, f"torchrec sharded training (NCCL) with the {o} table optimizer, resume, evaluation")
      for o in SPARSE_OPTIMIZERS),
)


def probe() -> str | None:
    """None when torch sees a CUDA device, else the reason there is nothing to check."""
    try:
        import torch
    except ImportError as exc:
        return f"{sys.executable} cannot import torch ({exc})"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU build)"
        return f"torch {torch.__version__} (CUDA build {built}): torch.cuda.is_available() is False"
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_stage(stage: Stage, out: Path, seconds: float) -> dict[str, Any]:
    """Run one stage in a subprocess for at most `seconds`; its record for summary.json."""
    record_path = out / "stages" / f"{stage.name}.json"
    log_path = out / "logs" / f"{stage.name}.log"
    record_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "projects.home.recap.gpu_check.stage", stage.name, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    with open(log_path, "w") as log:
        # Its own session, so a time-out ends the stage's children (pytest, data workers) too.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            rc = None
    elapsed = round(time.monotonic() - start, 1)
    if rc is None:
        record: dict[str, Any] = {"status": "timed_out", "reason": f"killed after its {seconds:.0f} s time box",
                  "log_tail": _tail(log_path)}
    elif record_path.exists():
        record = json.loads(record_path.read_text())
        if rc != 0 and record.get("status") == "ok":
            record = {**record, "status": "failed", "reason": f"exit status {rc} after reporting ok"}
    else:
        record = {"status": "failed", "reason": f"exit status {rc} without a result", "log_tail": _tail(log_path)}
    record["seconds"] = elapsed
    record["log"] = str(log_path)
    return record


def _line(name: str, record: dict[str, Any]) -> str:
    status = record["status"]
    detail = record.get("headline") or record.get("reason") or ""
    return f"  {name:<20} {status:<9} {record.get('seconds', 0):>6.1f}s  {detail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m projects.home.recap.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where summary.json and the logs go ({DEFAULT_OUT})")
    parser.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], help="only these stages")
    args = parser.parse_args(argv)

    reason = probe()
    if reason is not None:
        print(f"no CUDA device: {reason}; gpu-check did nothing")
        return 0

    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    for sub in ("stages", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if args.stages is None or s.name in args.stages]
    summary: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "host": platform.node(),
        "stages": {},
    }
    deadline = time.monotonic() + TOTAL_SECONDS
    print(f"gpu-check: {len(stages)} stages, at most {TOTAL_SECONDS:.0f} s; logs in {out / 'logs'}", flush=True)
    for stage in stages:
        left = deadline - time.monotonic()
        if left < 5:
            record = {"status": "skipped", "reason": f"out of time (the check's {TOTAL_SECONDS:.0f} s were spent)"}
        else:
            print(f"- {stage.name}: {stage.what} ...", flush=True)
            record = run_stage(stage, out, min(stage.seconds, left))
        summary["stages"][stage.name] = record
        print(_line(stage.name, record), flush=True)
        # Written after every stage: a killed check still leaves what it found.
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    environment = summary["stages"].get("environment", {}).get("results", {})
    summary["device"] = environment.get("device")
    summary["failed"] = [n for n, r in summary["stages"].items() if r["status"] in BAD]
    summary["skipped"] = {n: r.get("reason", "") for n, r in summary["stages"].items() if r["status"] == "skipped"}
    summary["ok"] = not summary["failed"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\ngpu-check on {summary['device'] or 'an unknown device'}:")
    for name, record in summary["stages"].items():
        print(_line(name, record))
    print(f"\n{'OK' if summary['ok'] else 'FAILED: ' + ', '.join(summary['failed'])}; "
          f"summary in {out / 'summary.json'}")
    return 0 if summary["ok"] else 1
