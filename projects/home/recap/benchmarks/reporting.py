"""What the benchmarks print and write: the machine the figures came from, text tables, the JSON document, and which
log lines a benchmark run shows."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from core import perf

__all__ = ["machine_info", "mb", "quiet_logging", "ruled", "write_figures"]


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (None where there is none)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


def machine_info() -> dict[str, Any]:
    """What the figures came from: CPU, cores, threads, library versions, load."""
    return {
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "onednn_linear": "onednn" in perf.BACKENDS,
        "load_average": list(perf.load_average()),
    }


def mb(n: float) -> str:
    """Bytes as whole MiB with thousands separators."""
    return f"{n / 2**20:,.0f}"


def ruled(header: str) -> list[str]:
    """A table's header line and the rule under it."""
    return [header, "-" * len(header)]


def write_figures(doc: Any, path: str | Path, label: str = "figures written to") -> Path:
    """Write every figure as JSON to path (its folder created) and print where: `LABEL PATH`."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{label} {output}")
    return output


def quiet_logging() -> None:
    """Log lines from the benchmarks and their progress only: torchrec and fbgemm log every table they build at
    INFO."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("projects.home.recap.benchmarks", "core.progress"):
        logging.getLogger(name).setLevel(logging.INFO)
