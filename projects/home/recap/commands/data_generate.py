"""`recap data generate --output DIR [--rows N] [--seed S] [--collaborative-dim K] [--history-length L]`: synthetic
recap-shaped parquet with oracle columns (and, with --history-length, engagement history list columns)."""

from __future__ import annotations

import argparse
import math
import os
import time

from core.log import get_logger
from core.storage import location_argument
from core.storage_ops import staged_output
from projects.home.recap.data.synthetic import DEFAULT_SPLITS, SyntheticSpec, generate

logger = get_logger(__name__)

# One epoch of the demo config on 2 CPU cores in a few minutes.
DEFAULT_ROWS = 500_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=location_argument, help="directory; writes OUTPUT/train, OUTPUT/validation, OUTPUT/test")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"total rows over all splits ({DEFAULT_ROWS})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--row-group-size", type=int, default=16_384)
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                        help="files written in parallel (the output does not depend on it)")
    parser.add_argument("--collaborative-dim", type=int, default=0, metavar="K",
                        help="hidden user and author vectors of K dimensions whose dot product moves every task's "
                             "logit; no column carries them, so only learned id embeddings capture it "
                             "(0: off, the default)")
    parser.add_argument("--collaborative-strength", type=float, default=1.0, metavar="S",
                        help="standard deviation of that dot product in logit units (1.0)")
    parser.add_argument("--candidates-per-request", type=int, default=SyntheticSpec.candidates_per_request,
                        metavar="N", help="consecutive rows sharing one request_id, user, client and hour "
                                          f"({SyntheticSpec.candidates_per_request}; 1: one row per request)")
    parser.add_argument("--history-length", type=int, default=0, metavar="L",
                        help="write each row's user engagement history, at most L items, most recent first, as the "
                             "list columns history.author_id, history.hashtag (raw ids), history.action (0 favorite, "
                             "1 reply, 2 retweet, 3 share) and history.age_hours; candidates often match it and it "
                             "moves every task's logit, so the oracle needs it (0: off, the default)")
    parser.add_argument("--history-strength", type=float, default=SyntheticSpec.history_strength, metavar="S",
                        help="scale of the history term in every task's logit "
                             f"({SyntheticSpec.history_strength}; 0: candidates still match the history, which "
                             "then moves nothing)")


    parser.add_argument("--history-ratings", action="store_true",
                        help="history.action holds ratings 0..4 (1 to 5 stars) that follow the user's taste for the "
                             "item's author and weigh the history term by their sign (num_actions: 5)")


def run(args: argparse.Namespace) -> int:
    if args.rows < 1 or args.rows_per_file < 1 or args.row_group_size < 1:
        raise SystemExit("--rows, --rows-per-file and --row-group-size must be positive")
    if args.candidates_per_request < 1:
        raise SystemExit("--candidates-per-request must be at least 1")
    if args.collaborative_dim < 0 or not 0 <= args.collaborative_strength < math.inf:
        raise SystemExit("--collaborative-dim must not be negative and --collaborative-strength must be finite and "
                         "not negative")
    if args.history_length < 0 or not math.isfinite(args.history_strength):
        raise SystemExit(f"--history-length must not be negative (got {args.history_length}) and --history-strength "
                         f"must be finite (got {args.history_strength})")
    spec = SyntheticSpec(collaborative_dim=args.collaborative_dim, collaborative_strength=args.collaborative_strength,
                         candidates_per_request=args.candidates_per_request, history_length=args.history_length,
                         history_strength=args.history_strength, history_ratings=args.history_ratings)
    start = time.perf_counter()
    with staged_output(args.output) as output:  # on an object store: written locally, then uploaded
        sizes = generate(output, args.rows, args.seed, spec=spec, splits=DEFAULT_SPLITS,
                         rows_per_file=args.rows_per_file, row_group_size=args.row_group_size,
                         processes=args.processes)
    seconds = time.perf_counter() - start
    for split, rows in sizes.items():
        print(f"{os.path.join(args.output, split)}: {rows} rows")
    print(f"{args.rows} rows in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s)")
    return 0
