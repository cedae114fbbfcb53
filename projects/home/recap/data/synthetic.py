"""Synthetic recap-shaped impressions drawn from a known ground-truth model, with its probabilities as oracle columns.

The world (per-id effects and latent vectors of users, authors and hashtags, feature loadings, task biases) is fixed
by the seed. Each row draws a user, an author and hashtags from Zipf distributions, a per-row context, heavy-tailed
continuous features and binary features that are noisy views of that context, upstream embeddings that are noisy
projections of the latent vectors, and a display position that depends on relevance. Ten engagement tasks share
latent factors (affinity, per-id biases, quality, social proof, media, spam) with multiplicative interactions; task
biases are solved so each task hits its positive rate. Labels are Bernoulli draws from the true probabilities,
which are written as oracle.<label column> so evaluation can compare a model with the best achievable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LABEL_PREFIX = "recap.engagement."
ORACLE_PREFIX = "oracle."
CONTINUOUS = "recap.continuous"
BINARY = "recap.binary"

# Demo tasks and their positive rates.
TASK_RATES: tuple[tuple[str, float], ...] = (
    ("is_favorited", 0.10),
    ("is_retweeted", 0.02),
    ("is_replied", 0.01),
    ("is_quoted", 0.003),
    ("is_good_clicked", 0.06),
    ("is_profile_clicked", 0.03),
    ("is_video_playback_50", 0.05),
    ("is_shared", 0.005),
    ("is_negative_feedback", 0.002),
    ("is_report_tweet_clicked", 0.001),
)

# Shared factors of the ground truth (columns of F) and each task's loadings on them.
FACTORS = ("affinity", "user_bias", "author_bias", "hashtag_bias", "quality", "social", "following", "context",
           "media", "activity_x_affinity", "quality_x_social", "media_x_video", "spam", "position")
LOADINGS: dict[str, dict[str, float]] = {
    "is_favorited": dict(affinity=1.0, user_bias=1.0, author_bias=1.0, hashtag_bias=0.5, quality=0.5, social=0.3,
                         following=0.6, context=1.0, activity_x_affinity=0.4, quality_x_social=0.3, position=1.0),
    "is_retweeted": dict(affinity=0.8, user_bias=0.8, author_bias=1.2, hashtag_bias=0.5, quality=0.4, social=0.7,
                         following=0.5, context=0.8, quality_x_social=0.5, position=0.8),
    "is_replied": dict(affinity=1.2, user_bias=1.2, author_bias=0.6, quality=0.2, following=0.9, context=0.8,
                       activity_x_affinity=0.8, position=0.8),
    "is_quoted": dict(affinity=0.8, user_bias=1.0, author_bias=1.0, hashtag_bias=0.6, social=0.8, context=0.6,
                      quality_x_social=0.6, position=0.6),
    "is_good_clicked": dict(affinity=0.6, user_bias=0.7, author_bias=0.5, quality=0.6, media=0.5, context=1.0,
                            media_x_video=0.3, position=1.4),
    "is_profile_clicked": dict(affinity=0.7, user_bias=0.6, author_bias=0.8, following=-0.8, social=0.4,
                               context=0.6, position=1.2),
    "is_video_playback_50": dict(affinity=0.4, user_bias=0.5, author_bias=0.4, media=0.6, media_x_video=1.4,
                                 quality=0.3, context=0.6, position=0.7),
    "is_shared": dict(affinity=0.9, user_bias=0.8, author_bias=0.8, hashtag_bias=0.8, quality=0.5, social=0.5,
                      context=0.5, quality_x_social=0.4, position=0.6),
    "is_negative_feedback": dict(affinity=-1.0, author_bias=-0.5, following=-0.8, spam=1.2, hashtag_bias=-0.4,
                                 context=0.4, position=0.2),
    "is_report_tweet_clicked": dict(affinity=-0.8, author_bias=-0.6, following=-0.6, spam=1.6, quality=-0.4),
}

_CONTEXT = 8  # per-row context dimensions the continuous and binary features are noisy views of


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic data; the defaults match projects/home/recap/config/demo.yaml."""

    num_continuous: int = 48
    num_binary: int = 16
    num_clients: int = 16
    num_author_types: int = 8
    num_hours: int = 24
    num_positions: int = 32
    num_users: int = 200_000
    num_authors: int = 50_000
    num_hashtags: int = 20_000
    user_zipf: float = 1.05
    author_zipf: float = 1.1
    hashtag_zipf: float = 1.0
    mean_hashtags: float = 1.0
    max_hashtags: int = 5
    latent_dim: int = 8
    embeddings: tuple[tuple[str, int], ...] = (("user_embedding", 32), ("author_embedding", 32),
                                               ("tweet_embedding", 16))
    tasks: tuple[tuple[str, float], ...] = TASK_RATES
    # Fraction of continuous values written as NaN (features 0-3) and +-inf (feature 4): featurization must cope.
    missing_rate: float = 0.002
    infinite_rate: float = 0.0002


@dataclass
class _Zipf:
    cdf: np.ndarray
    multiplier: int
    offset: int

    @classmethod
    def make(cls, size: int, exponent: float, multiplier: int, offset: int) -> _Zipf:
        weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
        cdf = np.cumsum(weights)
        return cls(cdf / cdf[-1], multiplier, offset)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(n)), len(self.cdf) - 1)

    def raw_id(self, index: np.ndarray) -> np.ndarray:
        # An odd multiplier is a bijection modulo 2**40: raw ids are unique, scattered and larger than any table.
        return (index.astype(np.int64) * self.multiplier + self.offset) & ((1 << 40) - 1)


@dataclass
class World:
    """The ground truth: everything fixed by the seed that rows are drawn from."""

    spec: SyntheticSpec
    users: _Zipf
    authors: _Zipf
    hashtags: _Zipf
    user_latent: np.ndarray
    user_bias: np.ndarray
    user_activity: np.ndarray
    author_latent: np.ndarray
    author_bias: np.ndarray
    author_popularity: np.ndarray
    author_type: np.ndarray
    type_media: np.ndarray
    hashtag_latent: np.ndarray
    hashtag_bias: np.ndarray
    client_effect: np.ndarray
    hour_phase: float
    continuous_loadings: np.ndarray
    continuous_mu: np.ndarray
    continuous_sigma: np.ndarray
    binary_loadings: np.ndarray
    binary_threshold: np.ndarray
    # Upstream embeddings: per-user and per-author vectors (noisy projections of their latent vectors), or for
    # other names the projection applied to each row's tweet latent vector.
    embedding_tables: list[np.ndarray]
    loadings: np.ndarray  # [T, len(FACTORS)]
    task_bias: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def task_names(self) -> list[str]:
        return [name for name, _ in self.spec.tasks]


def make_world(spec: SyntheticSpec, seed: int) -> World:
    """Draw the ground-truth model for `seed` and solve the task biases for the target positive rates."""
    rng = np.random.default_rng([seed, 1])
    k = spec.latent_dim
    c = spec.num_continuous
    context_loadings = rng.normal(size=(c, _CONTEXT))
    # Each continuous feature mostly views one context dimension, so the columns are informative but noisy.
    context_loadings[np.arange(c), np.arange(c) % _CONTEXT] += 3.0
    context_loadings /= np.linalg.norm(context_loadings, axis=1, keepdims=True)
    binary_loadings = rng.normal(size=(spec.num_binary, _CONTEXT))
    binary_loadings[np.arange(spec.num_binary), (np.arange(spec.num_binary) + 3) % _CONTEXT] += 2.0
    binary_loadings /= np.linalg.norm(binary_loadings, axis=1, keepdims=True)
    proj_in = {"user_embedding": k + 1, "author_embedding": k + 1}
    unknown = {"task": [t for t, _ in spec.tasks if t not in LOADINGS]}
    if unknown["task"]:
        raise ValueError(f"no ground-truth loadings for tasks {unknown['task']}; known: {sorted(LOADINGS)}")
    world = World(
        spec=spec,
        users=_Zipf.make(spec.num_users, spec.user_zipf, 2654435761, 17),
        authors=_Zipf.make(spec.num_authors, spec.author_zipf, 2246822519, 29),
        hashtags=_Zipf.make(spec.num_hashtags, spec.hashtag_zipf, 3266489917, 31),
        user_latent=rng.normal(size=(spec.num_users, k)).astype(np.float32),
        user_bias=rng.normal(0.0, 0.6, spec.num_users).astype(np.float32),
        user_activity=rng.normal(size=spec.num_users).astype(np.float32),
        author_latent=rng.normal(size=(spec.num_authors, k)).astype(np.float32),
        author_bias=rng.normal(0.0, 0.6, spec.num_authors).astype(np.float32),
        author_popularity=rng.normal(size=spec.num_authors).astype(np.float32),
        author_type=rng.integers(0, spec.num_author_types, spec.num_authors),
        type_media=rng.normal(0.0, 0.8, spec.num_author_types),
        hashtag_latent=rng.normal(size=(spec.num_hashtags, k)).astype(np.float32),
        hashtag_bias=rng.normal(0.0, 0.5, spec.num_hashtags).astype(np.float32),
        client_effect=rng.normal(0.0, 0.35, spec.num_clients),
        hour_phase=float(rng.uniform(0, 2 * np.pi)),
        continuous_loadings=context_loadings.astype(np.float32),
        continuous_mu=rng.uniform(-1.0, 5.0, c).astype(np.float32),
        continuous_sigma=rng.uniform(0.8, 2.2, c).astype(np.float32),
        binary_loadings=binary_loadings.astype(np.float32),
        binary_threshold=rng.uniform(0.0, 2.0, spec.num_binary).astype(np.float32),
        embedding_tables=[],
        loadings=np.array([[LOADINGS[t].get(f, 0.0) for f in FACTORS] for t, _ in spec.tasks], dtype=np.float32),
    )
    for name, dim in spec.embeddings:
        proj = rng.normal(size=(proj_in.get(name, k), dim)).astype(np.float32) / math.sqrt(k)
        if name == "user_embedding":
            src = np.concatenate([world.user_latent, world.user_activity[:, None]], 1)
        elif name == "author_embedding":
            src = np.concatenate([world.author_latent, world.author_popularity[:, None]], 1)
        else:
            world.embedding_tables.append(proj)
            continue
        noise = 0.1 * rng.standard_normal((len(src), dim), dtype=np.float32)
        world.embedding_tables.append(src @ proj + noise)
    reference = _draw(world, np.random.default_rng([seed, 2]), 50_000)
    world.task_bias = _solve_biases(reference["logits"], np.array([r for _, r in spec.tasks]))
    return world


def _solve_biases(logits: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per task, the bias b with mean(sigmoid(logit + b)) = rate (bisection; the mean is monotone in b)."""
    lo = np.full(logits.shape[1], -30.0)
    hi = np.full(logits.shape[1], 30.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        too_high = _sigmoid(logits + mid).mean(axis=0) > rates
        hi = np.where(too_high, mid, hi)
        lo = np.where(too_high, lo, mid)
    return (lo + hi) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw(world: World, rng: np.random.Generator, n: int) -> dict:
    """n rows of features and the tasks' logits without their biases."""
    spec = world.spec
    k = spec.latent_dim
    user = world.users.sample(rng, n)
    author = world.authors.sample(rng, n)
    counts = np.minimum(rng.poisson(spec.mean_hashtags, n), spec.max_hashtags)
    tags = world.hashtags.sample(rng, int(counts.sum()))
    row_of_tag = np.repeat(np.arange(n), counts)
    per_row = np.maximum(counts, 1)[:, None]
    tag_latent = (np.stack([np.bincount(row_of_tag, world.hashtag_latent[tags, j], n) for j in range(k)], 1)
                  / per_row).astype(np.float32)
    tag_bias = (np.bincount(row_of_tag, world.hashtag_bias[tags], n) / per_row[:, 0]).astype(np.float32)

    u_lat, a_lat = np.take(world.user_latent, user, axis=0), np.take(world.author_latent, author, axis=0)
    tweet_lat = 0.6 * a_lat + 0.8 * rng.standard_normal((n, k), dtype=np.float32)
    affinity = ((u_lat * a_lat).sum(1) + 0.6 * (u_lat * tweet_lat).sum(1) + 0.6 * (u_lat * tag_latent).sum(1)) / (
        1.5 * math.sqrt(k)
    )
    a_type = world.author_type[author]
    activity = world.user_activity[user]
    popularity = world.author_popularity[author]
    noise = rng.standard_normal((n, 5), dtype=np.float32)
    quality = noise[:, 0]
    freshness = noise[:, 1]
    media = noise[:, 2] + world.type_media[a_type].astype(np.float32)
    social = 0.5 * popularity + 0.5 * quality + 0.7 * noise[:, 3]
    spam = noise[:, 4]
    context = np.stack([activity, popularity, quality, freshness, media, social, spam, affinity], 1)

    c_noise = rng.standard_normal((n, spec.num_continuous), dtype=np.float32)
    log_x = world.continuous_mu + world.continuous_sigma * (context @ world.continuous_loadings.T * 0.9 + 0.45 * c_noise)
    continuous = np.exp(log_x).astype(np.float32)
    continuous[:, : spec.num_continuous // 3] = np.floor(continuous[:, : spec.num_continuous // 3])  # counts
    signed = slice(spec.num_continuous - 6, spec.num_continuous)
    continuous[:, signed] *= np.where(rng.random((n, 6)) < 0.5, -1.0, 1.0).astype(np.float32)
    holes = rng.random((n, 5))
    continuous[:, :4][holes[:, :4] < spec.missing_rate] = np.nan
    continuous[:, 4][holes[:, 4] < spec.infinite_rate] = np.inf

    b_noise = rng.standard_normal((n, spec.num_binary), dtype=np.float32)
    binary = (context @ world.binary_loadings.T + b_noise > world.binary_threshold).astype(np.int8)
    following = (affinity + 0.5 * b_noise[:, 0] > 0.8).astype(np.int8)
    has_video = (media + 0.5 * b_noise[:, 1] > 0.5).astype(np.int8)
    binary[:, 0], binary[:, 1] = following, has_video

    client = rng.integers(0, spec.num_clients, n)
    hour = rng.integers(0, spec.num_hours, n)
    ctx = world.client_effect[client] + 0.3 * np.sin(2 * np.pi * hour / spec.num_hours + world.hour_phase)
    relevance = affinity + world.user_bias[user] + world.author_bias[author] + 0.5 * quality
    # The ranker that produced the logs put relevant items higher: position correlates with engagement by itself.
    rank_score = -0.5 * relevance / relevance.std() + rng.standard_normal(n)
    position = np.minimum((spec.num_positions * _sigmoid(1.3 * rank_score)).astype(np.int64), spec.num_positions - 1)
    position_effect = -1.2 * np.log1p(position) / np.log(spec.num_positions)

    factors = np.stack(
        [
            affinity,
            world.user_bias[user],
            world.author_bias[author],
            tag_bias,
            quality,
            social,
            following,
            ctx,
            media,
            affinity * np.tanh(activity),
            quality * social,
            has_video * media,
            spam,
            position_effect,
        ],
        1,
    ).astype(np.float32)
    engagement = factors @ world.loadings.T
    # Active users amplify every signal: a multiplicative interaction no additive model captures.
    logits = engagement * (1.0 + 0.25 * np.tanh(activity))[:, None]

    embeddings = []
    for (name, dim), table in zip(spec.embeddings, world.embedding_tables):
        if name == "user_embedding":
            embeddings.append(np.take(table, user, axis=0))
        elif name == "author_embedding":
            embeddings.append(np.take(table, author, axis=0))
        else:
            embeddings.append(tweet_lat @ table + 0.1 * rng.standard_normal((n, dim), dtype=np.float32))

    return dict(
        continuous=continuous,
        binary=binary,
        client_id=client,
        author_type=a_type,
        hour_of_day=hour,
        position=position,
        user_id=world.users.raw_id(user),
        author_id=world.authors.raw_id(author),
        hashtags=world.hashtags.raw_id(tags),
        hashtag_counts=counts,
        embeddings=embeddings,
        logits=logits,
    )


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _id_list(values: np.ndarray, counts: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def generate_table(world: World, rng: np.random.Generator, n: int, first_request_id: int) -> pa.Table:
    """n rows with labels drawn from the ground truth and the true probabilities as oracle columns."""
    spec = world.spec
    d = _draw(world, rng, n)
    prob = _sigmoid(d["logits"] + world.task_bias)
    labels = (rng.random(prob.shape) < prob).astype(np.int8)
    ones = np.ones(n, dtype=np.int32)
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(np.arange(first_request_id, first_request_id + n, dtype=np.int64)),
        CONTINUOUS: _fixed_list(d["continuous"]),
        BINARY: _fixed_list(d["binary"]),
        "client_id": pa.array(d["client_id"]),
        "author_type": pa.array(d["author_type"]),
        "hour_of_day": pa.array(d["hour_of_day"]),
        "position": pa.array(d["position"]),
        "user_id": _id_list(d["user_id"], ones),
        "author_id": _id_list(d["author_id"], ones),
        "hashtags": _id_list(d["hashtags"], d["hashtag_counts"]),
    }
    for (name, _), values in zip(spec.embeddings, d["embeddings"]):
        columns[name] = _fixed_list(values.astype(np.float32, copy=False))
    for j, task in enumerate(world.task_names):
        columns[LABEL_PREFIX + task] = pa.array(labels[:, j])
    for j, task in enumerate(world.task_names):
        columns[ORACLE_PREFIX + LABEL_PREFIX + task] = pa.array(prob[:, j].astype(np.float32))
    return pa.table(columns)


DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.9), ("validation", 0.05), ("test", 0.05))


def split_sizes(rows: int, splits: tuple[tuple[str, float], ...]) -> dict[str, int]:
    """Rows per split (rounded down, the remainder to the first split)."""
    total = sum(f for _, f in splits)
    sizes = {name: int(rows * f / total) for name, f in splits}
    first = splits[0][0]
    sizes[first] += rows - sum(sizes.values())
    return sizes


_WORLD: World | None = None  # set before forking writer processes, so jobs do not carry the world


def _write_file(args: tuple) -> str:
    seed, split_index, file_index, n, first_id, path, row_group_size = args
    world = _WORLD
    table = generate_table(world, np.random.default_rng([seed, 3, split_index, file_index]), n, first_id)
    small = [c for c in table.column_names if c in ("client_id", "author_type", "hour_of_day", "position")
             or c.startswith(LABEL_PREFIX)]
    # Random floats do not compress: leaving them plain makes writing and reading faster at almost no size cost.
    floats = {c for c, t in zip(table.column_names, table.schema.types)
              if pa.types.is_floating(t) or (pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type))}
    pq.write_table(table, path, row_group_size=row_group_size, use_dictionary=small,
                   compression={c: "none" if c in floats else "snappy" for c in table.column_names},
                   write_statistics=[c for c in table.column_names if c not in floats])
    return path


def generate(
    output: str | os.PathLike,
    rows: int,
    seed: int = 0,
    spec: SyntheticSpec = SyntheticSpec(),
    splits: tuple[tuple[str, float], ...] = DEFAULT_SPLITS,
    rows_per_file: int = 50_000,
    row_group_size: int = 16_384,
    processes: int = 1,
) -> dict[str, int]:
    """Write output/<split>/part-NNNNN.parquet for each split; returns the rows per split. Deterministic for a seed."""
    global _WORLD
    _WORLD = make_world(spec, seed)
    jobs = []
    for s, (split, n_rows) in enumerate(split_sizes(rows, splits).items()):
        directory = os.path.join(output, split)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith("part-") and name.endswith(".parquet"):
                os.remove(os.path.join(directory, name))
        num_files = max(1, -(-n_rows // rows_per_file))
        for f in range(num_files):
            lo, hi = f * n_rows // num_files, (f + 1) * n_rows // num_files
            first_id = (s + 1) * 10**12 + lo
            path = os.path.join(directory, f"part-{f:05d}.parquet")
            jobs.append((seed, s, f, hi - lo, first_id, path, row_group_size))
    try:
        if processes > 1 and len(jobs) > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(processes) as pool:
                list(pool.imap_unordered(_write_file, jobs))
        else:
            for job in jobs:
                _write_file(job)
    finally:
        _WORLD = None
    return split_sizes(rows, splits)
