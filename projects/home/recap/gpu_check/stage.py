"""One gpu-check stage in its own process: python -m projects.home.recap.gpu_check.stage NAME --out DIR.

A stage function takes the output directory and returns {"headline": one line, "results": {...}}; raising Skip
records the stage as skipped with its reason, any other exception as failed with the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from projects.home.recap.gpu_check.stage_record import Skip

# stage name -> (module, function); modules are imported only when their stage runs.
_FUNCTIONS = {
    "environment": ("checks", "environment"),
    "matmul_peak": ("gpu", "matmul_peak_stage"),
    "dense_train": ("dense", "dense_train_stage"),
    "evaluator_metrics": ("checks", "evaluator_metrics_stage"),
    "export": ("checks", "export_stage"),
    "cuda_tests": ("checks", "cuda_tests_stage"),
}


def stage_function(name: str) -> Callable[[Path], dict[str, Any]]:
    """The function that runs stage `name`."""
    if name not in _FUNCTIONS and not name.startswith("sparse_"):
        raise KeyError(f"no gpu-check stage {name!r}; stages: {', '.join(_FUNCTIONS)}, sparse_<optimizer>")
    if name.startswith("sparse_"):
        from projects.home.recap.gpu_check.sparse import sparse_stage

        return lambda out: sparse_stage(out, name[len("sparse_"):])
    module, function = _FUNCTIONS[name]
    return getattr(importlib.import_module(f"projects.home.recap.gpu_check.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    from core.log import setup_logging

    setup_logging()
    try:
        record: dict[str, Any] = {"status": "ok", **stage_function(args.name)(out)}
    except Skip as exc:
        record = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # recorded, so the other stages still run
        traceback.print_exc()
        record = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    (out / "stages" / f"{args.name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "traceback"}, indent=2, default=str)[:4000])
    return 0 if record["status"] != "failed" else 1


if __name__ == "__main__":
    # Skip lives in stage_record, so running this file as __main__ still catches the Skip that stages raise.
    raise SystemExit(main())
