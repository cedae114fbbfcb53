"""Rows/s of a serving artifact on the request path against row by row, side by side in one process.

    python -m projects.home.recap.benchmarks.serving [--config projects/home/recap/config/demo_history.yaml]
        [--length 32] [--candidates 16] [--rows 1024] [--encoders pooling target_attention transformer]
        [--seconds 3] [--output figures.json]

For each history encoder the config's model (its history group's encoder swapped, max_length set to --length;
initial weights: speed does not depend on them) is exported as `recap export` does, loaded back with
torch.export.load, and the same --rows candidate rows, --candidates per request, are scored by the artifact twice:
  - request path: the histories of rows / candidates requests and request_of_row, each history encoded once;
  - row by row: one history per row (each row carries its request's history; request_of_row = arange(rows)).
The two are timed in alternation, one call each in turn, so a shared machine's load falls on both alike. It prints
rows/s of each (the best of the timing windows, and the median) and the ratio, and checks that both give the same
scores. Run it under `flock /tmp/bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from core import perf
from projects.home.recap.benchmarks.timing import interleaved_timing
from projects.home.recap.model.factory import build_model
from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.schema import RecapConfig, load_recap_config
from projects.home.recap.serving.export import export_serving_artifact
from projects.home.recap.serving.score_example import load_artifact
from projects.home.recap.serving.serving_model import serving_inputs

DEFAULT_CONFIG = Path(__file__).parents[1] / "config" / "demo_history.yaml"
ENCODERS = {
    "pooling": "{pooling: {mode: mean}}",
    "target_attention": "{target_attention: {hidden_dims: [32], softmax: false}}",
    "transformer": "{transformer: {num_layers: 2, num_heads: 4}}",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment config with one history group")
    parser.add_argument("--length", type=int, default=32, help="history length L (max_length), 32")
    parser.add_argument("--candidates", type=int, default=16, help="candidates per request C, 16")
    parser.add_argument("--rows", type=int, default=1024, help="candidate rows per call, 1024")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per path and encoder")
    parser.add_argument("--output", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.rows % args.candidates:
        parser.error(f"--rows {args.rows} is not a multiple of --candidates {args.candidates}")
    return args


def encoder_config(path: str, encoder: str, length: int) -> tuple[RecapConfig, str]:
    """The config with its (single) history group's encoder and max_length replaced; and the group's name."""
    config = load_recap_config(path)
    if len(config.data.features.sequences) != 1:
        raise ValueError(f"{path}: the benchmark needs exactly one history group, the config has "
                         f"{list(config.data.features.sequences)}")
    group = next(iter(config.data.features.sequences))
    key = f"model.sequences.{group}.encoder"
    overrides = [f"{key}.{name}=null" for name in ENCODERS] + [f"{key}={ENCODERS[encoder]}",
                                                               f"data.features.sequences.{group}.max_length={length}"]
    if encoder == "transformer":  # item weights are for pooling and target attention only
        overrides += [f"model.sequences.{group}.action_weights=false", f"model.sequences.{group}.time_decay=null"]
    return load_recap_config(path, overrides), group


def request_and_row_inputs(config: RecapConfig, group: str, feature_names: list[str], rows: int,
                           candidates: int) -> tuple[tuple, tuple]:
    """(request-path inputs, row-by-row inputs) of the same rows: rows / candidates requests, each history drawn
    once and carried by its candidates' rows."""
    g = torch.Generator().manual_seed(0)
    requests = rows // candidates
    batch = random_batch(config, rows, g)
    length = config.data.features.sequences[group].max_length
    per_row = serving_inputs(batch, feature_names, {group: length}, share_requests=False)
    histories, _ = per_row[6:]
    request_of_row = torch.arange(requests).repeat_interleave(candidates)
    # Every history full, so both paths do the work of L items.
    first = torch.arange(requests) * candidates
    shared = {k: v if "/candidate:" in k else v[first] for k, v in histories.items()}
    shared[f"{group}/mask"] = torch.ones_like(shared[f"{group}/mask"])
    row_by_row = {k: v if "/candidate:" in k else v[request_of_row] for k, v in shared.items()}
    return (*per_row[:6], shared, request_of_row), (*per_row[:6], row_by_row, torch.arange(rows))


def interleaved(calls: dict[str, Callable[[], object]], budget_seconds: float, warmup: int = 2,
                min_repeats: int = 5) -> dict[str, perf.Timing]:
    """Time each call in turn, one call per window, alternating between them until each has had its share of the
    budget (and at least min_repeats windows): a shared machine's load then falls on both alike, so their ratio
    holds even when the absolute figures move."""
    with torch.inference_mode():
        return interleaved_timing(calls, budget_seconds, warmup=warmup, min_rounds=min_repeats)


def measure(args: argparse.Namespace, encoder: str) -> dict:
    config, group = encoder_config(args.config, encoder, args.length)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_serving_artifact(model, config, Path(tmp) / "artifact")
        program, metadata = load_artifact(artifact)
    features = [f["name"] for f in metadata["sparse_features"]]
    on_requests, row_by_row = request_and_row_inputs(config, group, features, args.rows, args.candidates)
    with torch.inference_mode():
        difference = (program(*on_requests)["logits"] - program(*row_by_row)["logits"]).abs().max().item()
    out = {"encoder": encoder, "history_length": args.length, "candidates_per_request": args.candidates,
           "rows": args.rows, "requests": args.rows // args.candidates, "max_abs_logit_difference": difference}
    paths = {"request_path": on_requests, "row_by_row": row_by_row}
    timings = interleaved({name: functools.partial(program, *inputs) for name, inputs in paths.items()},
                          args.seconds)
    for name, timing in timings.items():
        out[name] = {"rows_per_second": timing.rate(args.rows), "median_rows_per_second": args.rows / timing.median,
                     "repeats": timing.repeats}
    out["speed_up"] = out["request_path"]["rows_per_second"] / out["row_by_row"]["rows_per_second"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [measure(args, encoder) for encoder in args.encoders]
    print(f"serving artifact, L={args.length}, C={args.candidates}, {args.rows} rows per call "
          f"({torch.get_num_threads()} threads)")
    print("| encoder | request path rows/s (median) | row by row rows/s (median) | speed-up | max |logit diff| |")
    print("|---|---|---|---|---|")
    for r in results:
        a, b = r["request_path"], r["row_by_row"]
        print(f"| {r['encoder']} | {a['rows_per_second']:,.0f} ({a['median_rows_per_second']:,.0f}) | "
              f"{b['rows_per_second']:,.0f} ({b['median_rows_per_second']:,.0f}) | {r['speed_up']:.1f}x | "
              f"{r['max_abs_logit_difference']:.1e} |")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
