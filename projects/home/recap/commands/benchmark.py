"""`recap benchmark`: throughput and MFU of the demo and recap-scale models against this machine's matmul peak.

Prints a table and writes every figure as JSON (--output). `--quick` runs every phase at tiny budgets (a smoke test:
the figures mean nothing). See projects/home/recap/benchmarks/throughput.py for what is measured and how.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from core.storage import local_path_argument
from projects.home.recap.benchmarks.config_benchmark import DEFAULT_CONFIGS, PRECISIONS, BenchmarkSettings
from projects.home.recap.benchmarks.reporting import quiet_logging, write_figures
from projects.home.recap.benchmarks.throughput import format_report, run_benchmark

DEFAULT_OUTPUT = "runs/benchmark.json"


def _config_arg(text: str) -> tuple[str, Path]:
    # NAME=PATH, or a bare path named after its file.
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).stem, text
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"config file {path} does not exist")
    return name, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="configs", action="append", type=_config_arg, metavar="[NAME=]FILE",
                        help="experiment YAML to measure (repeatable; default: the demo and recap_scale configs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value in every measured config, e.g. --set data.num_workers=2")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: each config's)")
    parser.add_argument("--precision", dest="precisions", action="append", choices=PRECISIONS,
                        help="fp32 and/or bf16 (default: both)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, type=local_path_argument, help=f"JSON file for every figure ({DEFAULT_OUTPUT})")
    parser.add_argument("--torchrun", type=int, default=2, metavar="N",
                        help="also time training on N ranks under torchrun against 1 rank (default 2; 0 skips)")
    parser.add_argument("--seconds", type=float,
                        help="measuring budget in seconds per training and pipeline figure (defaults 6 and 8; "
                             "evaluation gets half)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="also time training compiled and with the task towers one by one (default: on, off with "
                             "--quick; compiling takes a minute or more per config and precision)")
    parser.add_argument("--compile-backend", choices=["inductor", "aot_eager"], default="inductor",
                        help="torch.compile backend of the compiled variants (inductor; aot_eager traces without "
                             "generating code: a quick check, not a speed figure)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets and the demo config only unless --config is given: a smoke test")


def run(args: argparse.Namespace) -> int:
    settings = BenchmarkSettings.quick() if args.quick else BenchmarkSettings()
    changes: dict = {"overrides": tuple(args.overrides), "batch_size": args.batch_size, "torchrun_nproc": args.torchrun}
    if args.compile is not None:
        changes["compile"] = args.compile
    changes["compile_backend"] = args.compile_backend
    if args.configs:
        changes["configs"] = tuple(args.configs)
    elif args.quick:
        changes["configs"] = DEFAULT_CONFIGS[:1]
    if args.precisions:
        changes["precisions"] = tuple(dict.fromkeys(args.precisions))
    if args.seconds is not None:
        changes.update(train_seconds=args.seconds, pipeline_seconds=args.seconds, eval_seconds=args.seconds / 2)
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("--batch-size must be positive")
    settings = dataclasses.replace(settings, **changes)
    quiet_logging()
    doc = run_benchmark(settings)
    print(format_report(doc))
    write_figures(doc, args.output)
    return 0
