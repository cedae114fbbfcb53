"""`recap benchmark ids`: how well our model learns ids, against a plain-PyTorch reference and the data's oracle.

Generates data whose engagement depends on hidden user x author interactions (if --data-dir is empty), trains the
ids config through `recap train`'s path and the reference (nn.EmbeddingBag tables + Adam, the same dense model) on the
same files, evaluates both on the test split with the project's evaluator, prints per-task AUC / RCE side by side
and writes every figure as JSON. See projects/home/recap/benchmarks/ids/.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from core.storage import local_path_argument
from projects.home.recap.benchmarks.ids.reference_training import EMBEDDING_LEARNING_RATE
from projects.home.recap.benchmarks.ids.run import (
    DEFAULT_ROWS,
    IDS_CONFIG,
    IdBenchmarkSettings,
    run_id_benchmark,
)
from projects.home.recap.benchmarks.ids.table import format_table
from projects.home.recap.benchmarks.reporting import write_figures

OUTPUT_NAME = "ids_benchmark.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="data/ids", type=local_path_argument, help="collaborative synthetic data (generated if absent)")
    parser.add_argument("--save-dir", type=local_path_argument, help="both runs' checkpoints and reports (default: runs/ids/<date-time>)")
    parser.add_argument("--config", default=str(IDS_CONFIG), help="experiment YAML (default: the ids config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set optimizer.sparse.learning_rate=0.1; "
                             "both models are built from the result (optimizer.sparse concerns ours only)")
    parser.add_argument("--reference-lr", type=float, default=EMBEDDING_LEARNING_RATE, metavar="LR",
                        help=f"the reference's Adam learning rate for its tables ({EMBEDDING_LEARNING_RATE:g})")
    parser.add_argument("--dataset", dest="datasets", action="append", default=[], metavar="NAME",
                        help="validation set to evaluate (repeatable; default: the config's evaluation.datasets)")
    parser.add_argument("--output", type=local_path_argument, help=f"JSON file for every figure (default: SAVE_DIR/{OUTPUT_NAME})")
    generation = parser.add_argument_group("data generation (only when --data-dir is empty)")
    generation.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"total rows ({DEFAULT_ROWS:,})")
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--collaborative-dim", type=int, default=4, metavar="K",
                            help="hidden dimensions of the user x author interaction (4)")
    generation.add_argument("--collaborative-strength", type=float, default=1.0, metavar="S",
                            help="standard deviation of the interaction in logit units (1.0)")


def run(args: argparse.Namespace) -> int:
    if args.rows < 1 or args.collaborative_dim < 1:
        raise SystemExit("--rows and --collaborative-dim must be positive")
    if not 0 <= args.collaborative_strength < math.inf or not 0 < args.reference_lr < math.inf:
        raise SystemExit("--collaborative-strength must be finite and not negative, --reference-lr finite and "
                         "positive")
    save_dir = Path(args.save_dir or Path("runs/ids") / time.strftime("%Y%m%d-%H%M%S"))
    settings = IdBenchmarkSettings(
        save_dir=save_dir,
        config=Path(args.config),
        overrides=tuple(args.overrides),
        data_dir=Path(args.data_dir),
        rows=args.rows,
        seed=args.seed,
        collaborative_dim=args.collaborative_dim,
        collaborative_strength=args.collaborative_strength,
        embedding_learning_rate=args.reference_lr,
        datasets=tuple(args.datasets),
    )
    doc = run_id_benchmark(settings)
    print(format_table(doc))
    write_figures(doc, args.output or save_dir / OUTPUT_NAME)
    return 0
