"""The `recap` command line. Each subcommand lives in projects/home/recap/commands/ and is imported only when used.

Also runnable under torchrun: `torchrun --nproc_per_node 2 -m projects.home.recap.main train --config FILE`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from core.config import ConfigError
from core.log import setup_logging
from core.process_exit import run_and_end
from core.storage_retries import StorageError

# name -> (module in projects.home.recap.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("validate_config", "print the fully resolved config, or its errors"),
    "data generate": ("data_generate", "write synthetic recap-shaped parquet with oracle probabilities"),
    "data generate-small": ("data_generate_small", "write small rating/click logs (1k users x 2k items, two tasks)"),
    "data census": ("data_census", "convert the UCI Census-Income (KDD) file to parquet splits"),
    "data stats": ("data_stats", "compute continuous-feature statistics for zscore_log featurization"),
    "data ids": ("data_ids", "count the distinct ids of each large embedding table, to size the tables"),
    "data downsample": ("data_downsample", "drop a fraction of all-negative rows and reweight the rest"),
    "data prepare": ("data_prepare", "rewrite a parquet dataset in the prepared layout (fast, memory-mapped)"),
    "data benchmark": ("data_benchmark", "measure loader throughput (rows/s) for a config's schema"),
    "train": ("train", "train a model (alone, under torchrun, or with --nproc-per-node)"),
    "tune": ("tune", "hyperparameter search on a validation set (Optuna), each trial a real training"),
    "evaluate": ("evaluate", "evaluate a checkpoint on the validation sets and write the report"),
    "report": ("report", "rebuild a run's report, or compare two runs"),
    "predict": ("predict", "score parquet files with a checkpoint"),
    "export": ("export", "export a checkpoint to a self-contained serving artifact"),
    "benchmark": ("benchmark", "measure throughput and MFU against the machine's matmul peak"),
    "benchmark ids": ("benchmark_ids", "id learning: our model vs a plain-PyTorch reference vs the oracle"),
    "benchmark baselines": ("benchmark_baselines", "ours vs plain PyTorch references on small data and census"),
    "benchmark history": ("benchmark_history", "history: training rows/s with vs without it; the transformer per request vs per row, MFU"),
    "benchmark eval-memory": ("benchmark_eval_memory", "exact evaluation's peak memory per rank, sharded vs gathered"),
    "demo": ("demo", "generate data, train on 2 ranks, evaluate: the two-command start"),
}


def _usage() -> str:
    lines = ["usage: recap COMMAND [options]   (recap COMMAND --help for a command's options)", "", "commands:"]
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"  {name:<18} {help_text}")
    return "\n".join(lines)


def _find_command(argv: list[str]) -> tuple[str, list[str]] | None:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None


def command_parser(name: str, module) -> argparse.ArgumentParser:
    """The argument parser of command `name`: options must be spelled in full, because a prefix accepted today
    becomes ambiguous (an error) as soon as another option starting with it is added, and launchers that parse the
    same command line (torchrun) have options of their own."""
    parser = argparse.ArgumentParser(prog=f"recap {name}", description=COMMANDS[name][1], allow_abbrev=False)
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `recap` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # `torchrun ... -m projects.home.recap.main -- evaluate --run DIR`: the `--` that keeps torchrun's own
        # parser off the command's options reaches the module on some Python versions.
        argv = argv[1:]
    found = _find_command(argv)
    if found is None:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = found
    setup_logging()
    from core.distributed import quiet_library_logging

    quiet_library_logging()  # before any command imports torchrec (fbgemm logs while loading)
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(f"projects.home.recap.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("projects.home.recap.commands"):
            print(f"recap {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    args = command_parser(name, module).parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except StorageError as exc:  # an object store refused for good: one line naming the URL
        print(f"recap {name}: {exc}", file=sys.stderr)
        return 1


def console() -> NoReturn:
    """The `recap` program: main's status, ending a process that ran collectives as core.process_exit explains."""
    run_and_end(main)


if __name__ == "__main__":
    console()
