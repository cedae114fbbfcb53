"""`recap benchmark baselines`: our model against a plain PyTorch shared-bottom and a peer-style one (the same with
early stopping) on small rating/click data and census, on the same splits, scored with the project's metrics.

Prints per data set and task the positive rate, test AUC and RCE of the three models and ours minus the peer's AUC,
and writes every figure with the command line as JSON. See projects/home/recap/baselines/.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from core.storage import local_path_argument
from projects.home.recap.baselines.datasets import DEFAULT_CENSUS_INPUT, DEFAULT_CONFIGS, DEFAULT_DATA_DIRS
from projects.home.recap.baselines.run import DATASETS, QUICK_SMALL_ROWS, BaselineSettings, run_baselines
from projects.home.recap.baselines.small_data import DEFAULT_ROWS
from projects.home.recap.baselines.table import format_table
from projects.home.recap.benchmarks.reporting import write_figures

DEFAULT_OUTPUT = Path("runs/baselines/baselines.json")


def local_path(value: str) -> Path:
    """A local path argument (a URL is an error: these runs are written locally)."""
    return Path(local_path_argument(value))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=[*DATASETS, "both"], default="both", help="data set(s) to run (both)")
    parser.add_argument("--config", action="append", default=[], metavar="DATASET=FILE",
                        help="our model's config for a data set (repeatable; default: "
                             + ", ".join(f"{n}={p.name}" for n, p in DEFAULT_CONFIGS.items())
                             + " of projects/home/recap/config); a bare FILE when --data names one data set")
    parser.add_argument("--small-dir", type=Path, default=DEFAULT_DATA_DIRS["small"],
                        help="small data (generated if absent or made with other --rows / --seed)")
    parser.add_argument("--census-dir", type=Path, default=DEFAULT_DATA_DIRS["census"],
                        help="census splits (converted from --census-input if absent)")
    parser.add_argument("--census-input", type=Path, default=DEFAULT_CENSUS_INPUT,
                        help=f"the UCI Census-Income (KDD) file ({DEFAULT_CENSUS_INPUT})")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows of the small data ({DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the small data and of the references (0)")
    parser.add_argument("--save-dir", type=local_path, help="our runs (default: runs/baselines/<date-time>)")
    parser.add_argument("--output", type=local_path, default=DEFAULT_OUTPUT, help=f"JSON of every figure ({DEFAULT_OUTPUT})")
    parser.add_argument("--quick", action="store_true",
                        help=f"one epoch of every model (the peer at most two), {QUICK_SMALL_ROWS:,} small rows: a "
                             "smoke test, not a measurement")


def _configs(entries: list[str], datasets: tuple[str, ...]) -> dict[str, Path]:
    configs = dict(DEFAULT_CONFIGS)
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise SystemExit(f"--config {entry}: name the data set (DATASET=FILE) when --data is both")
            name, path = datasets[0], entry
        if name not in DATASETS:
            raise SystemExit(f"--config {entry}: unknown data set {name!r} (choose from {list(DATASETS)})")
        if not Path(path).is_file():
            raise SystemExit(f"--config {entry}: no such file {path}")
        configs[name] = Path(path)
    return configs


def _shown(path: Path) -> str:
    """path relative to the working directory when it lies under it (the shipped configs), else as given."""
    return str(path.resolve().relative_to(Path.cwd())) if path.resolve().is_relative_to(Path.cwd()) else str(path)


def command_line(args: argparse.Namespace, configs: dict[str, Path], save_dir: Path) -> str:
    """The command with every option spelled out, so the JSON says exactly what ran."""
    words = ["recap", "benchmark", "baselines", "--data", args.data]
    for name in DATASETS:
        words += ["--config", f"{name}={_shown(configs[name])}"]
    words += ["--small-dir", str(args.small_dir), "--census-dir", str(args.census_dir), "--census-input",
              str(args.census_input), "--rows", str(args.rows), "--seed", str(args.seed), "--save-dir", str(save_dir),
              "--output", str(args.output)]
    return shlex.join(words + (["--quick"] if args.quick else []))


def run(args: argparse.Namespace) -> int:
    if args.rows < 10:
        raise SystemExit(f"--rows must be at least 10 (got {args.rows})")
    datasets = DATASETS if args.data == "both" else (args.data,)
    configs = _configs(args.config, datasets)
    save_dir = args.save_dir or Path("runs/baselines") / time.strftime("%Y%m%d-%H%M%S")
    settings = BaselineSettings(save_dir=save_dir, datasets=datasets, configs=configs,
                                data_dirs={"small": args.small_dir, "census": args.census_dir},
                                census_input=args.census_input, small_rows=args.rows, seed=args.seed,
                                quick=args.quick)
    doc = {"command": command_line(args, configs, save_dir), **run_baselines(settings)}
    print(format_table(doc))
    write_figures(doc, args.output)
    return 0
