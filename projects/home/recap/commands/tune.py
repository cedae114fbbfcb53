"""`recap tune --space SPACE.yaml [--config BASE] [--output DIR] [--trials N] [--parallel N] [--timeout S]
[--seed S] [--pruner none|median|hyperband]`: hyperparameter search on a validation set, each trial a `recap train`
in DIR/trials/<number>. The study is kept in DIR, so the same command continues an interrupted search; DIR gets
trials.json, trials.html and best.yaml (the best trial's config, ready for `recap train --config`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.log import get_logger
from core.storage import local_path_argument

logger = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", required=True, help="search-space YAML (base, metric, parameters)")
    parser.add_argument("--config", default=None, help="base experiment YAML (instead of the space's `base`)")
    parser.add_argument("--output", default="runs/tune", type=local_path_argument, help="the search's directory (default runs/tune)")
    parser.add_argument("--trials", type=int, default=20, metavar="N",
                        help="finished trials in the study to stop at, counting those of earlier runs (default 20)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="trainings at once (default 1)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="start no trial after this long (running trials finish)")
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed")
    parser.add_argument("--pruner", choices=["none", "median", "hyperband"], default="median",
                        help="stop unpromising trials on their periodic evaluation (default median)")


def run(args: argparse.Namespace) -> int:
    from core.run_lock import RunLock, RunLockedError
    from projects.home.recap.tune.report import BEST_FILE, best_trial, trials_table, write_outputs
    from projects.home.recap.tune.space import check_space, load_space, resolve_base
    from projects.home.recap.tune.study import (
        Search,
        journal_storage,
        make_pruner,
        open_study,
        recover_interrupted,
    )

    for option, value in (("--trials", args.trials), ("--parallel", args.parallel)):
        if value < 1:
            raise SystemExit(f"{option} must be at least 1, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise SystemExit(f"--timeout must be positive, got {args.timeout}")
    space = load_space(args.space)
    base = resolve_base(space, args.space, args.config)
    config = check_space(space, args.space, base)  # every key path and the metric, before any trial
    tune_dir = Path(args.output)
    tune_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(tune_dir)
    try:
        lock.acquire()
    except RunLockedError:
        raise SystemExit(f"--output {tune_dir}: another recap tune is running on it (see {lock.path}); wait for it "
                         "or choose another --output") from None
    try:
        storage = journal_storage(tune_dir)
        pruner = make_pruner(args.pruner, config.training.eval_every_n)
        study = open_study(storage, tune_dir, space, base, pruner, args.seed)
        recover_interrupted(study, storage, tune_dir)
        search = Search(study, space, base, tune_dir, args.trials, args.parallel, args.timeout,
                        on_trial_end=lambda _: write_outputs(search))
        signum = search.run()
        rows = write_outputs(search)
    finally:
        lock.release()
    print(trials_table(rows, space))
    best = best_trial(study)
    if best is not None:
        print(f"best: trial {best.number}, {space.metric.name} {best.value:.5f}; "
              f"recap train --config {tune_dir / BEST_FILE}")
    else:
        print(f"no trial has completed yet; the study is in {tune_dir}")
    if signum is not None:
        logger.warning("stopped by signal %d; run the same command to continue", signum)
        return 128 + signum
    return 0
