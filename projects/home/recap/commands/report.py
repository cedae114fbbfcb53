"""`recap report RUN_DIR [--compare OTHER_RUN_DIR] [--output DIR] [--step N]`.

Rebuilds a run's report (report.html, report.md, report.json) from the evaluations saved by `recap evaluate` under
RUN_DIR/eval/<dataset>/step_<N>/ (metrics.json and curves.json; the latest step of each dataset unless --step is
given) and the TensorBoard scalars under RUN_DIR. With --compare, writes comparison.html/.md/.json instead: RUN_DIR
next to OTHER_RUN_DIR (the baseline, at its latest steps) with per-task deltas RUN_DIR − OTHER_RUN_DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.report import ReportError, load_run, write_comparison, write_run_report
from core.storage import local_path_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=local_path_argument, help="a run's training.save_dir")
    parser.add_argument("--compare", metavar="OTHER_RUN_DIR", type=local_path_argument,
                        help="put RUN_DIR side by side with this baseline run (deltas are RUN_DIR - OTHER_RUN_DIR)")
    parser.add_argument("--output", metavar="DIR", type=local_path_argument,
                        help="output directory (default RUN_DIR/report, or RUN_DIR/report/compare_<OTHER name>)")
    parser.add_argument("--step", type=int, metavar="N",
                        help="report RUN_DIR's evaluations at step N instead of the latest")


def run(args: argparse.Namespace) -> int:
    try:
        results = load_run(args.run_dir, args.step)
        if args.compare:
            baseline = load_run(args.compare)
            output = Path(args.output) if args.output else Path(args.run_dir) / "report" / f"compare_{baseline.name}"
            paths = write_comparison(output, results, baseline)
        else:
            output = Path(args.output) if args.output else Path(args.run_dir) / "report"
            paths = write_run_report(output, results)
    except ReportError as exc:
        print(f"recap report: {exc}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0
