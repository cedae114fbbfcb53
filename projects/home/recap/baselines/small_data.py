"""Small rating/click-log data with a known ground truth: `recap data generate-small`.

About 100k impressions of ~1,000 users on ~2,000 items. Users and items are drawn from Zipf-like distributions
(a few heavy users and hit items, a long tail seen a handful of times). Each row's logit is dominated by a per-user
and a per-item bias, plus a rank-4 user x item effect, a user x item-category effect (partly through the user's
segment), an hour-of-day curve, the item's tags and three heavy-tailed continuous side features of which only
`price` (on purchases) and `item_age_days` matter much. Two tasks, `click` (~20% positives) and `purchase` (~3%),
share the user effects and part of the item effects; purchase has an item bias of its own and its own price
sensitivity. Labels are Bernoulli draws from the true probabilities, written as `oracle.<label>`.

Columns: user_id, item_id, item_category, user_segment, hour_of_day (int64); price, item_age_days,
session_seconds (float32); item_tags (list<int64>, 1-5 ids of 200); click, purchase (int8 labels);
oracle.click, oracle.purchase (float32). Split 80/10/10 at random into OUTPUT/{train,validation,test}.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.home.recap.data.census import SPLITS, split_indices
from projects.home.recap.data.layout import ORACLE_PREFIX

DEFAULT_ROWS = 100_000
TASK_RATES = (("click", 0.20), ("purchase", 0.03))
DISCRETE = ("item_category", "user_segment", "hour_of_day")
CONTINUOUS = ("price", "item_age_days", "session_seconds")
TAGS = "item_tags"
# What was generated (spec, rows, seed, split sizes): lets a benchmark tell whether a directory holds what it needs.
# The leading underscore keeps it out of parquet dataset discovery (pyarrow skips such names), so the output
# directory itself still reads as the union of the splits.
MANIFEST = "_small_data.json"


@dataclass(frozen=True)
class SmallSpec:
    """Sizes and strengths of the ground truth (logit units)."""

    num_users: int = 1_000
    num_items: int = 2_000
    num_categories: int = 20
    num_segments: int = 8
    num_tags: int = 200
    max_tags: int = 5
    rank: int = 4
    user_zipf: float = 0.7
    item_zipf: float = 0.9
    user_bias: float = 0.9
    item_bias: float = 0.9
    low_rank: float = 0.6
    user_category: float = 0.5
    tag: float = 0.25


@dataclass
class World:
    """Everything fixed per user, item and tag."""

    user_p: np.ndarray
    item_p: np.ndarray
    user_segment: np.ndarray
    item_category: np.ndarray
    item_price: np.ndarray
    tag_offsets: np.ndarray  # item i's tags are tag_values[tag_offsets[i]:tag_offsets[i + 1]]
    tag_values: np.ndarray
    item_tag_effect: np.ndarray  # [items, tasks]: summed effect of the item's tags
    user_bias: np.ndarray
    item_bias: np.ndarray  # [items, tasks]
    user_factors: np.ndarray  # [users, rank]
    item_factors: np.ndarray  # [items, rank]
    user_category: np.ndarray  # [users, categories]


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like probabilities over n ids in random order (so an id's value says nothing about its popularity)."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def _standard(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def make_world(spec: SmallSpec, rng: np.random.Generator) -> World:
    """Draw the per-user, per-item and per-tag effects."""
    user_p, item_p = _zipf(rng, spec.num_users, spec.user_zipf), _zipf(rng, spec.num_items, spec.item_zipf)
    user_segment = rng.integers(0, spec.num_segments, spec.num_users)
    # Uneven category sizes, as in a real catalogue.
    item_category = rng.choice(spec.num_categories, spec.num_items, p=rng.dirichlet(np.full(spec.num_categories, 2.0)))
    item_price = np.exp(rng.normal(3.0, 1.0, spec.num_items))
    counts = rng.integers(1, spec.max_tags + 1, spec.num_items)
    tag_p = _zipf(rng, spec.num_tags, 1.0)
    tag_values = np.concatenate([rng.choice(spec.num_tags, c, replace=False, p=tag_p) for c in counts])
    tag_offsets = np.concatenate([[0], np.cumsum(counts)])
    tag_effect = rng.normal(0.0, spec.tag, (spec.num_tags, len(TASK_RATES)))
    item_tag_effect = np.add.reduceat(tag_effect[tag_values], tag_offsets[:-1], axis=0)
    # Hit items are somewhat better liked: popularity and the click bias are correlated, as in real logs.
    shared_item = spec.item_bias * (0.8 * rng.normal(size=spec.num_items) + 0.3 * _standard(np.log(item_p)))
    item_bias = np.stack([shared_item, 0.6 * shared_item + 0.7 * rng.normal(0.0, spec.item_bias, spec.num_items)], 1)
    # Sums of `rank` products of unit normals have variance `rank`: scale the dot product to std low_rank.
    scale = np.sqrt(spec.low_rank / np.sqrt(spec.rank))
    segment_category = rng.normal(size=(spec.num_segments, spec.num_categories))
    user_category = spec.user_category * (0.7 * segment_category[user_segment]
                                          + 0.7 * rng.normal(size=(spec.num_users, spec.num_categories)))
    return World(user_p=user_p, item_p=item_p, user_segment=user_segment, item_category=item_category,
                 item_price=item_price, tag_offsets=tag_offsets, tag_values=tag_values,
                 item_tag_effect=item_tag_effect, user_bias=rng.normal(0.0, spec.user_bias, spec.num_users),
                 item_bias=item_bias, user_factors=scale * rng.normal(size=(spec.num_users, spec.rank)),
                 item_factors=scale * rng.normal(size=(spec.num_items, spec.rank)), user_category=user_category)


def _solve_bias(logits: np.ndarray, rate: float) -> float:
    """The constant that makes the mean probability equal rate (bisection; the mean is monotone in it)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def draw_rows(world: World, rng: np.random.Generator, rows: int) -> pa.Table:
    """rows impressions: ids, side features, labels and the true probabilities."""
    user = rng.choice(len(world.user_p), rows, p=world.user_p)
    item = rng.choice(len(world.item_p), rows, p=world.item_p)
    category = world.item_category[item]
    # Evening-heavy traffic: a mixture of a daytime and an evening peak.
    hour = np.where(rng.random(rows) < 0.6, rng.normal(20.0, 2.5, rows), rng.normal(12.0, 3.0, rows))
    hour = np.mod(np.round(hour), 24).astype(np.int64)
    price = world.item_price[item] * np.exp(rng.normal(0.0, 0.1, rows))  # discounts move it a little
    age = 30.0 * (rng.pareto(1.5, rows) + 0.01)
    session = np.exp(rng.normal(4.0, 1.5, rows))
    log_price, log_age, log_session = _standard(np.log(price)), _standard(np.log1p(age)), _standard(np.log(session))
    dot = np.einsum("ij,ij->i", world.user_factors[user], world.item_factors[item])
    affinity = world.user_bias[user] + dot + world.user_category[user, category]
    evening = np.cos(2 * np.pi * (hour - 20) / 24)
    logits = np.stack([
        affinity + world.item_bias[item, 0] + world.item_tag_effect[item, 0] + 0.25 * evening
        - 0.3 * log_age - 0.1 * log_price + 0.05 * log_session,
        0.8 * affinity + world.item_bias[item, 1] + world.item_tag_effect[item, 1] + 0.1 * evening
        - 0.5 * log_price - 0.1 * log_age + 0.05 * log_session,
    ])
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(user.astype(np.int64)),
        "item_id": pa.array(item.astype(np.int64)),
        "item_category": pa.array(category.astype(np.int64)),
        "user_segment": pa.array(world.user_segment[user].astype(np.int64)),
        "hour_of_day": pa.array(hour),
        "price": pa.array(price.astype(np.float32)),
        "item_age_days": pa.array(age.astype(np.float32)),
        "session_seconds": pa.array(session.astype(np.float32)),
    }
    starts, ends = world.tag_offsets[item], world.tag_offsets[item + 1]
    lengths = ends - starts
    # Gather every row's slice of tag_values at once: position k of a row reads starts + k.
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tags = world.tag_values[np.repeat(starts, lengths) + within].astype(np.int64)
    columns[TAGS] = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
                                             pa.array(tags))
    probabilities = []
    for (label, rate), logit in zip(TASK_RATES, logits):
        p = 1.0 / (1.0 + np.exp(-(logit + _solve_bias(logit, rate))))
        columns[label] = pa.array((rng.random(rows) < p).astype(np.int8))
        probabilities.append(p)
    for (label, _), p in zip(TASK_RATES, probabilities):
        columns[ORACLE_PREFIX + label] = pa.array(p.astype(np.float32))
    return pa.table(columns)


def generate_small(output: str | os.PathLike, rows: int = DEFAULT_ROWS, seed: int = 0,
                   spec: SmallSpec = SmallSpec()) -> dict[str, int]:
    """Write OUTPUT/{train,validation,test}/part-00000.parquet (a random 80/10/10 split) and OUTPUT/_small_data.json;
    returns the rows per split. The same seed writes the same files."""
    if rows < len(SPLITS):
        raise ValueError(f"rows must be at least {len(SPLITS)} (one per split), got {rows}")
    rng = np.random.default_rng(seed)
    table = draw_rows(make_world(spec, rng), rng, rows)
    sizes = {}
    for split, indices in split_indices(rows, seed).items():
        directory = Path(output) / split
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(pa.array(indices)), directory / "part-00000.parquet")
        sizes[split] = len(indices)
    manifest = {"rows": rows, "seed": seed, "splits": sizes, "spec": asdict(spec)}
    (Path(output) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return sizes


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """What generate_small wrote into directory, or None if it did not (or the file is unreadable)."""
    try:
        return json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
