"""Synthetic recap-shaped impressions drawn from a known ground-truth model, with its probabilities as oracle columns.

The world (per-id effects and latent vectors of users, authors and hashtags, feature loadings, task biases) is fixed
by the seed. Rows come in requests: candidates_per_request consecutive rows share a request_id, a user, a client and
an hour. Each request draws its user, each row an author and hashtags, from Zipf distributions, then a per-row
context, heavy-tailed continuous features and binary features that are noisy views of that context, upstream
embeddings that are noisy projections of the latent vectors, and a display position that depends on relevance. Ten engagement tasks share
latent factors (affinity, per-id biases, quality, social proof, media, spam) with multiplicative interactions; task
biases are solved so each task hits its positive rate. With collaborative_dim > 0, hidden per-user and per-author
vectors that no column carries add their dot product to every task's logit (projects/home/recap/data/collaborative.py).
With history_length L > 0, every request also draws its user's engagement history (at most L items, most recent
first; every row of the request carries the same lists): history.author_id and history.hashtag (raw ids in the
author_id and hashtags columns' id spaces), history.action (0 favorite, 1 reply, 2 retweet, 3 share) and
history.age_hours (non-decreasing). Items come mostly from a per-user pool of preferred authors and hashtags, a
candidate's author and first hashtag often come from its request's history, and every task's logit gains
history_strength * loading * log1p(match), where match sums action weight * exp(-age / 24 h) over the history items
whose author is the candidate's (1) or whose hashtag is one of the candidate's (0.5): the oracle needs the history.
Labels are Bernoulli draws from the true probabilities,
which are written as oracle.<label column> so evaluation can compare a model with the best achievable.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.progress import Progress
from projects.home.recap.data.collaborative import CollaborativeSignal, make_collaborative
from projects.home.recap.data.layout import ORACLE_PREFIX

LABEL_PREFIX = "recap.engagement."
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

# Engagement history: the action types of history.action, their weights in the match term, and each task's loading
# on log1p(match) (engagements respond positively, negative feedback and reports negatively).
HISTORY_ACTIONS = ("favorite", "reply", "retweet", "share")
NUM_ACTIONS = len(HISTORY_ACTIONS)
HISTORY_COLUMNS = ("history.author_id", "history.hashtag", "history.action", "history.age_hours")
_ACTION_WEIGHTS = np.array([1.0, 1.5, 1.2, 1.3], dtype=np.float32)
_ACTION_RATES = np.array([0.6, 0.1, 0.2, 0.1])
HISTORY_LOADINGS: dict[str, float] = {
    "is_favorited": 1.0,
    "is_retweeted": 1.0,
    "is_replied": 0.9,
    "is_quoted": 0.7,
    "is_good_clicked": 0.6,
    "is_profile_clicked": 0.8,
    "is_video_playback_50": 0.4,
    "is_shared": 1.0,
    "is_negative_feedback": -0.5,
    "is_report_tweet_clicked": -0.5,
}
_HISTORY_TAU_HOURS = 24.0  # decay of an engagement's weight with its age
_HISTORY_GAP_HOURS = 4.0  # mean time between a user's engagements
_INTEREST_POOL = 8  # preferred authors and hashtags per user
_FROM_POOL = 0.75  # share of history items from the user's pools (the rest: the global popularity)


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
    # Hidden dimensions of the collaborative signal (0: none) and the standard deviation of its dot product.
    collaborative_dim: int = 0
    collaborative_strength: float = 1.0
    # Impressions per request: consecutive rows share one request_id, user, client and hour (the candidates shown
    # to one user at one time; a file's last request may be shorter). 1: every row is its own request.
    candidates_per_request: int = 8
    # Engagement history items per row at most (0: no history columns, the data as without them), the scale of the
    # history term in every task's logit, and the chance that a candidate's author (and, independently, its first
    # hashtag) is drawn from its request's history instead of the global popularity.
    history_length: int = 0
    history_strength: float = 1.5
    history_match_rate: float = 0.35

    def __post_init__(self) -> None:
        if self.candidates_per_request < 1:
            raise ValueError(f"candidates_per_request must be at least 1, got {self.candidates_per_request}")
        if self.history_length < 0:
            raise ValueError(f"history_length must not be negative, got {self.history_length}")
        if not math.isfinite(self.history_strength):
            raise ValueError(f"history_strength must be finite, got {self.history_strength}")
        if not 0.0 <= self.history_match_rate <= 1.0:
            raise ValueError(f"history_match_rate must be in [0, 1], got {self.history_match_rate}")


def _rng(*key: int) -> np.random.Generator:
    """The generator for one stream of draws: SFC64 is the fastest of numpy's bit generators."""
    return np.random.Generator(np.random.SFC64(list(key)))


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """float32 normals with standard deviation `scale` (Box-Muller: about twice as fast as numpy's ziggurat)."""
    size = math.prod(shape)
    half = (size + 1) // 2
    uniform = rng.random(2 * half, dtype=np.float32)
    radius, angle = uniform[:half], uniform[half:]
    np.subtract(1.0, radius, out=radius)  # (0, 1]: the log is finite
    np.log(radius, out=radius)
    radius *= -2.0 * scale * scale
    np.sqrt(radius, out=radius)
    angle *= 2.0 * math.pi
    out = np.empty(2 * half, dtype=np.float32)
    np.cos(angle, out=out[:half])
    np.sin(angle, out=out[half:])
    out[:half] *= radius
    out[half:] *= radius
    return out[:size].reshape(shape)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for a short inner dimension, on this thread."""
    # BLAS would split these thin products over threads that cost far more CPU time in waiting than they save.
    return np.einsum("ij,jk->ik", a, b)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """The sigmoid computed in place, without temporaries."""
    np.negative(x, out=x)
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives the right limit, 0
        np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


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
        uniform = rng.random(n)
        # Searching in sorted order walks the table once instead of n cache-missing binary searches; same result.
        order = np.argsort(uniform)
        index = np.empty(n, dtype=np.int64)
        index[order] = np.searchsorted(self.cdf, uniform[order])
        return np.minimum(index, len(self.cdf) - 1, out=index)

    def raw_id(self, index: np.ndarray) -> np.ndarray:
        # An odd multiplier is a bijection modulo 2**40: raw ids are unique, scattered and larger than any table.
        return (index.astype(np.int64) * self.multiplier + self.offset) & ((1 << 40) - 1)


def _capped_poisson_cdf(mean: float, cap: int) -> np.ndarray:
    """P(X <= j) for j < cap, X ~ Poisson(mean): the number of these at or below a uniform draw is min(X, cap)."""
    pmf = np.empty(max(cap, 1))
    pmf[0] = math.exp(-mean)
    for j in range(1, len(pmf)):
        pmf[j] = pmf[j - 1] * mean / j
    return np.cumsum(pmf)[:cap]


@dataclass(frozen=True)
class Interests:
    """Each user's preferred authors and hashtags (indices, [U, pool]), which their engagement history mostly comes
    from, and each task's loading on the history term ([T])."""

    authors: np.ndarray
    hashtags: np.ndarray
    loadings: np.ndarray


def _make_interests(spec: SyntheticSpec, seed: int) -> Interests | None:
    """The users' interests, drawn from a stream of their own (None without history)."""
    if spec.history_length == 0:
        return None
    unknown = [t for t, _ in spec.tasks if t not in HISTORY_LOADINGS]
    if unknown:
        raise ValueError(f"no history loadings for tasks {unknown}; known: {sorted(HISTORY_LOADINGS)}")
    rng = _rng(seed, 5)
    # Flatter than the impressions' popularity: users share favourites less than they share a feed of hits.
    authors = _Zipf.make(spec.num_authors, 0.7, 1, 0).sample(rng, spec.num_users * _INTEREST_POOL)
    hashtags = _Zipf.make(spec.num_hashtags, 0.7, 1, 0).sample(rng, spec.num_users * _INTEREST_POOL)
    return Interests(authors.astype(np.int32).reshape(spec.num_users, _INTEREST_POOL),
                     hashtags.astype(np.int32).reshape(spec.num_users, _INTEREST_POOL),
                     np.array([HISTORY_LOADINGS[t] for t, _ in spec.tasks], dtype=np.float32))


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
    collaborative: CollaborativeSignal | None = None
    interests: Interests | None = None

    @property
    def task_names(self) -> list[str]:
        return [name for name, _ in self.spec.tasks]


def make_world(spec: SyntheticSpec, seed: int) -> World:
    """Draw the ground-truth model for `seed` and solve the task biases for the target positive rates."""
    # The world keeps numpy's default generator and draws: the same seed gives the same ground truth as ever.
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
        type_media=rng.normal(0.0, 0.8, spec.num_author_types).astype(np.float32),
        hashtag_latent=rng.normal(size=(spec.num_hashtags, k)).astype(np.float32),
        hashtag_bias=rng.normal(0.0, 0.5, spec.num_hashtags).astype(np.float32),
        client_effect=rng.normal(0.0, 0.35, spec.num_clients).astype(np.float32),
        hour_phase=float(rng.uniform(0, 2 * np.pi)),
        continuous_loadings=context_loadings.astype(np.float32),
        continuous_mu=rng.uniform(-1.0, 5.0, c).astype(np.float32),
        continuous_sigma=rng.uniform(0.8, 2.2, c).astype(np.float32),
        binary_loadings=binary_loadings.astype(np.float32),
        binary_threshold=rng.uniform(0.0, 2.0, spec.num_binary).astype(np.float32),
        embedding_tables=[],
        loadings=np.array([[LOADINGS[t].get(f, 0.0) for f in FACTORS] for t, _ in spec.tasks], dtype=np.float32),
        collaborative=make_collaborative(spec.num_users, spec.num_authors, spec.collaborative_dim,
                                         spec.collaborative_strength, [t for t, _ in spec.tasks], seed),
        interests=_make_interests(spec, seed),
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
        table = 0.1 * rng.standard_normal((len(src), dim), dtype=np.float32)
        table += _matmul(src, proj)
        world.embedding_tables.append(table)
    # The reference rows carry every term of the logits, the history's included, so the rates hold with it on.
    reference = _draw(world, _rng(seed, 2), 50_000)
    world.task_bias = _solve_biases(reference["logits"], np.array([r for _, r in spec.tasks]))
    return world


def _solve_biases(logits: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per task (row of logits), the bias b with mean(sigmoid(logit + b)) = rate.

    Newton's method on log(mean(sigmoid(logit + b))), nearly linear in b for rare tasks, increasing in b, kept
    inside a bracket that every step narrows (a step that would leave it bisects instead).
    """
    logits = logits.astype(np.float64)
    lo = np.full(len(logits), -30.0)
    hi = np.full(len(logits), 30.0)
    bias = np.clip(np.log(rates / (1 - rates)) - logits.mean(axis=1), lo, hi)
    for _ in range(100):
        p = _sigmoid(logits + bias[:, None])
        mean = p.mean(axis=1)
        lo = np.where(mean < rates, bias, lo)
        hi = np.where(mean > rates, bias, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = bias - np.log(mean / rates) * mean / (p * (1 - p)).mean(axis=1)
        converged = np.abs(step - bias) < 1e-10
        if converged.all():
            return step
        bias = np.where(converged | ((step > lo) & (step < hi)), step, (lo + hi) / 2)
    return bias


class _History(NamedTuple):
    """Each request's engagement history as [R, L] arrays (indices; entries at or past its length are padding)."""

    length: np.ndarray
    author: np.ndarray
    hashtag: np.ndarray
    action: np.ndarray
    age: np.ndarray

    def recency(self) -> np.ndarray:
        """exp(-age / tau) per item, 0 for padding, [R, L]."""
        weight = np.exp(self.age * np.float32(-1.0 / _HISTORY_TAU_HOURS))
        weight[np.arange(weight.shape[1]) >= self.length[:, None]] = 0.0
        return weight


def _draw_history(world: World, rng: np.random.Generator, user: np.ndarray) -> _History:
    """One engagement history per request of these users, most recent item first."""
    interests, max_length = world.interests, world.spec.history_length
    r = len(user)
    # Geometric lengths around L/2, longer for active users, capped at L: some users have only a few items or none.
    mean = np.float32(0.5 * max_length) * np.exp(0.5 * world.user_activity[user] - 0.125)
    length = np.minimum(np.floor(-mean * np.log1p(-rng.random(r, dtype=np.float32))), max_length).astype(np.int64)
    real = np.arange(max_length) < length[:, None]

    def items(pool: np.ndarray, popularity: _Zipf) -> np.ndarray:
        # Slot floor(pool * u^2): the first slots, a user's favourites, are the likeliest (35%, 15%, ... 6.5%).
        slots = rng.random((r, max_length), dtype=np.float32)
        slots *= slots
        slots *= _INTEREST_POOL
        slots = np.minimum(slots.astype(np.int64), _INTEREST_POOL - 1)
        values = np.take_along_axis(pool[user], slots, axis=1).astype(np.int64)
        outside = rng.random((r, max_length), dtype=np.float32) >= _FROM_POOL
        outside &= real  # padding needs no draws of its own
        values[outside] = popularity.sample(rng, int(outside.sum()))
        return values

    author = items(interests.authors, world.authors)
    hashtag = items(interests.hashtags, world.hashtags)
    uniform = rng.random((r, max_length), dtype=np.float32)
    action = np.zeros((r, max_length), dtype=np.int64)
    for threshold in np.cumsum(_ACTION_RATES)[:-1]:  # the inverse cdf of the action rates, one comparison a type
        action += uniform >= threshold
    gaps = -np.log1p(-rng.random((r, max_length), dtype=np.float32))
    gaps *= np.float32(_HISTORY_GAP_HOURS)
    return _History(length, author, hashtag, action, np.cumsum(gaps, axis=1, dtype=np.float32))


def _pick_recent(rng: np.random.Generator, history: _History, cdf: np.ndarray, request: np.ndarray) -> np.ndarray:
    """For rows of these requests, an item index drawn in proportion to its recency (cdf: cumulative recency)."""
    target = rng.random(len(request)) * cdf[request, -1]
    index = (cdf[request] < target[:, None]).sum(axis=1)
    return np.minimum(index, history.length[request] - 1)


def _match_candidates(world: World, rng: np.random.Generator, history: _History, request: np.ndarray,
                      author: np.ndarray, tags: np.ndarray, counts: np.ndarray) -> None:
    """Draw some rows' author and first hashtag from their request's history instead (in place)."""
    cdf = np.cumsum(history.recency(), axis=1)
    rate = world.spec.history_match_rate
    has_history = history.length[request] > 0
    rows = np.flatnonzero(has_history & (rng.random(len(request)) < rate))
    author[rows] = history.author[request[rows], _pick_recent(rng, history, cdf, request[rows])]
    first = np.cumsum(counts) - counts
    rows = np.flatnonzero(has_history & (counts > 0) & (rng.random(len(request)) < rate))
    tags[first[rows]] = history.hashtag[request[rows], _pick_recent(rng, history, cdf, request[rows])]


def _history_match(world: World, history: _History, request: np.ndarray, author: np.ndarray, tags: np.ndarray,
                   counts: np.ndarray) -> np.ndarray:
    """Per row, sum over its history of action weight * exp(-age / tau) * ([same author] + 0.5 [hashtag among the
    candidate's]), float32 [n]."""
    n = len(request)
    candidate_tags = np.full((n, max(world.spec.max_hashtags, 1)), -1, dtype=np.int64)
    row_of_tag = np.repeat(np.arange(n), counts)
    candidate_tags[row_of_tag, np.arange(len(tags)) - np.repeat(np.cumsum(counts) - counts, counts)] = tags
    item_author, item_tag = history.author[request], history.hashtag[request]
    same = (item_author == author[:, None]).astype(np.float32)
    tagged = item_tag == candidate_tags[:, :1]
    for k in range(1, candidate_tags.shape[1]):
        tagged |= item_tag == candidate_tags[:, k : k + 1]
    same += 0.5 * tagged
    weight = history.recency()
    weight *= _ACTION_WEIGHTS[history.action]
    return np.einsum("ij,ij->i", same, weight[request])


def _history_lists(world: World, history: _History, request: np.ndarray) -> dict[str, np.ndarray]:
    """The rows' history columns as flat values (each row its request's items) and per-row lengths."""
    lengths = history.length[request]
    keep = np.arange(history.author.shape[1]) < lengths[:, None]
    return {
        "history.author_id": world.authors.raw_id(history.author[request][keep]),
        "history.hashtag": world.hashtags.raw_id(history.hashtag[request][keep]),
        "history.action": history.action[request][keep],
        "history.age_hours": history.age[request][keep],
        "lengths": lengths,
    }


def _draw(world: World, rng: np.random.Generator, n: int) -> dict:
    """n rows of features and the tasks' logits without their biases ([T, n]); with a collaborative signal also
    each row's hidden interaction ("collaborative", [n]), which no column carries; with a history also the rows'
    history lists ("history") and the history term before its task loadings and the activity amplification
    ("history_term", [n])."""
    spec = world.spec
    k = spec.latent_dim
    per_request = spec.candidates_per_request
    num_requests = -(-n // per_request)

    def by_request(values: np.ndarray) -> np.ndarray:
        """One value per request -> one per row (a no-op with one candidate per request)."""
        return values if per_request == 1 else np.repeat(values, per_request)[:n]

    request_user = world.users.sample(rng, num_requests)
    user = by_request(request_user)
    author = world.authors.sample(rng, n)
    hashtag_cdf = _capped_poisson_cdf(spec.mean_hashtags, spec.max_hashtags)
    counts = np.searchsorted(hashtag_cdf, rng.random(n), side="right")
    tags = world.hashtags.sample(rng, int(counts.sum()))
    extra = {}
    if world.interests is not None:
        # A child stream: the row stream's own draws stay exactly those of the data without history.
        history_rng = rng.spawn(1)[0]
        history = _draw_history(world, history_rng, request_user)
        request = np.arange(n) // per_request
        _match_candidates(world, history_rng, history, request, author, tags, counts)
        term = _history_match(world, history, request, author, tags, counts)
        np.log1p(term, out=term)
        term *= np.float32(spec.history_strength)
        extra = dict(history=_history_lists(world, history, request), history_term=term)
    # Mean latent vector and bias of each row's hashtags (zero without any); tags are grouped by row.
    tagged = counts > 0
    starts = (np.cumsum(counts) - counts)[tagged]
    per_row = counts[tagged].astype(np.float32)
    tag_latent = np.zeros((n, k), dtype=np.float32)
    tag_bias = np.zeros(n, dtype=np.float32)
    if len(tags):
        tag_latent[tagged] = np.add.reduceat(world.hashtag_latent[tags], starts, axis=0) / per_row[:, None]
        tag_bias[tagged] = np.add.reduceat(world.hashtag_bias[tags], starts) / per_row

    u_lat, a_lat = np.take(world.user_latent, user, axis=0), np.take(world.author_latent, author, axis=0)
    tweet_lat = _normal(rng, (n, k), 0.8)
    tweet_lat += 0.6 * a_lat
    # affinity = u.a + 0.6 u.tweet + 0.6 u.tags, as one dot product with the mixed vector
    mix = tag_latent
    mix += tweet_lat
    mix *= 0.6
    mix += a_lat
    affinity = np.einsum("ij,ij->i", u_lat, mix)
    affinity *= 1.0 / (1.5 * math.sqrt(k))
    a_type = world.author_type[author]
    # Per-row context, one dimension per row of this array: activity, popularity, quality, freshness, media,
    # social, spam, affinity.
    context = np.empty((_CONTEXT, n), dtype=np.float32)
    np.take(world.user_activity, user, out=context[0])
    np.take(world.author_popularity, author, out=context[1])
    context[2:7] = _normal(rng, (5, n))
    activity, popularity, quality, _, media, social, spam, _ = context
    media += world.type_media[a_type]
    social *= 0.7
    social += 0.5 * popularity
    social += 0.5 * quality
    context[7] = affinity

    continuous = _normal(rng, (n, spec.num_continuous))
    continuous *= 0.45 * world.continuous_sigma
    continuous += _matmul(context.T, (0.9 * world.continuous_sigma[:, None] * world.continuous_loadings).T)
    continuous += world.continuous_mu
    np.exp(continuous, out=continuous)
    counted = continuous[:, : spec.num_continuous // 3]
    np.floor(counted, out=counted)
    signed = continuous[:, spec.num_continuous - 6 :]
    flips = rng.integers(0, 2, signed.shape, dtype=np.uint32)
    flips <<= 31  # the float32 sign bit
    np.bitwise_xor(signed.view(np.uint32), flips, out=signed.view(np.uint32))
    holes = rng.random((n, 5), dtype=np.float32)
    continuous[:, :4][holes[:, :4] < spec.missing_rate] = np.nan
    continuous[:, 4][holes[:, 4] < spec.infinite_rate] = np.inf

    b_noise = _normal(rng, (n, spec.num_binary))
    following = affinity + 0.5 * b_noise[:, 0] > 0.8
    has_video = media + 0.5 * b_noise[:, 1] > 0.5
    b_noise += _matmul(context.T, world.binary_loadings.T)
    binary = (b_noise > world.binary_threshold).view(np.int8)
    binary[:, 0], binary[:, 1] = following, has_video

    client = by_request(rng.integers(0, spec.num_clients, num_requests))
    hour = by_request(rng.integers(0, spec.num_hours, num_requests))
    hour_effect = 0.3 * np.sin(2 * np.pi * np.arange(spec.num_hours) / spec.num_hours + world.hour_phase)
    ctx = world.client_effect[client] + hour_effect.astype(np.float32)[hour]
    relevance = affinity + world.user_bias[user] + world.author_bias[author] + 0.5 * quality
    # The ranker that produced the logs put relevant items higher: position correlates with engagement by itself.
    rank_score = _normal(rng, (n,))
    rank_score += relevance * (-0.5 / relevance.std())
    rank_score *= 1.3
    position = np.minimum((spec.num_positions * _sigmoid_inplace(rank_score)).astype(np.int64), spec.num_positions - 1)
    position_effect = (-1.2 * np.log1p(np.arange(spec.num_positions)) / np.log(spec.num_positions)).astype(np.float32)

    factors = np.empty((len(FACTORS), n), dtype=np.float32)
    factors[0] = affinity
    np.take(world.user_bias, user, out=factors[1])
    np.take(world.author_bias, author, out=factors[2])
    factors[3] = tag_bias
    factors[4] = quality
    factors[5] = social
    factors[6] = following
    factors[7] = ctx
    factors[8] = media
    np.tanh(activity, out=factors[9])
    factors[9] *= affinity
    np.multiply(quality, social, out=factors[10])
    np.multiply(has_video, media, out=factors[11])
    factors[12] = spam
    np.take(position_effect, position, out=factors[13])
    logits = _matmul(world.loadings, factors)
    interaction = None
    if world.collaborative is not None:
        interaction = world.collaborative.interaction(user, author)
        logits += world.collaborative.logits(interaction)
    if extra:
        logits += np.outer(world.interests.loadings, extra["history_term"])
    # Active users amplify every signal: a multiplicative interaction no additive model captures.
    amplify = np.tanh(activity)
    amplify *= 0.25
    amplify += 1.0
    logits *= amplify

    embeddings = []
    for (name, dim), table in zip(spec.embeddings, world.embedding_tables):
        if name == "user_embedding":
            embeddings.append(np.take(table, user, axis=0))
        elif name == "author_embedding":
            embeddings.append(np.take(table, author, axis=0))
        else:
            values = _normal(rng, (n, dim), 0.1)
            values += _matmul(tweet_lat, table)
            embeddings.append(values)

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
        collaborative=interaction,
        **extra,
    )


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _id_list(values: np.ndarray, counts: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def generate_table(world: World, rng: np.random.Generator, n: int, first_row_id: int) -> pa.Table:
    """n rows with labels drawn from the ground truth and the true probabilities as oracle columns."""
    spec = world.spec
    d = _draw(world, rng, n)
    prob = d["logits"]
    prob += world.task_bias.astype(np.float32)[:, None]
    _sigmoid_inplace(prob)
    labels = (rng.random(prob.shape, dtype=np.float32) < prob).view(np.int8)
    ones = np.ones(n, dtype=np.int32)
    columns: dict[str, pa.Array] = {
        # Impressions are numbered from the file's first row number, requests from the number of their first row:
        # both unique across files and splits.
        "impression_id": pa.array(first_row_id + np.arange(n, dtype=np.int64)),
        "request_id": pa.array(first_row_id + np.arange(n, dtype=np.int64) // spec.candidates_per_request
                               * spec.candidates_per_request),
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
    if "history" in d:
        lists = d["history"]
        for name in HISTORY_COLUMNS:
            columns[name] = _id_list(lists[name], lists["lengths"])
    for (name, _), values in zip(spec.embeddings, d["embeddings"]):
        columns[name] = _fixed_list(values.astype(np.float32, copy=False))
    for j, task in enumerate(world.task_names):
        columns[LABEL_PREFIX + task] = pa.array(labels[j])
    for j, task in enumerate(world.task_names):
        columns[ORACLE_PREFIX + LABEL_PREFIX + task] = pa.array(prob[j])
    table = pa.table(columns)
    # Nothing here is ever null: required fields spare readers the definition levels (~25% faster decoding of the
    # float lists).
    return table.cast(pa.schema([_required(f) for f in table.schema]))


def _required(field: pa.Field) -> pa.Field:
    kind = field.type
    if pa.types.is_fixed_size_list(kind):
        kind = pa.list_(pa.field("item", kind.value_type, nullable=False), kind.list_size)
    elif pa.types.is_list(kind):
        kind = pa.list_(pa.field("item", kind.value_type, nullable=False))
    return pa.field(field.name, kind, nullable=False)


DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.9), ("validation", 0.05), ("test", 0.05))


def split_sizes(rows: int, splits: tuple[tuple[str, float], ...]) -> dict[str, int]:
    """Rows per split (rounded down, the remainder to the first split)."""
    total = sum(f for _, f in splits)
    sizes = {name: int(rows * f / total) for name, f in splits}
    first = splits[0][0]
    sizes[first] += rows - sum(sizes.values())
    return sizes


_WORLD: World | None = None  # set before forking writer processes, so jobs do not carry the world


class _Job(NamedTuple):
    seed: int
    split_index: int
    file_index: int
    rows: int
    first_id: int
    path: str
    row_group_size: int


def _file_table(job: _Job) -> pa.Table:
    return generate_table(_WORLD, _rng(job.seed, 3, job.split_index, job.file_index), job.rows, job.first_id)


def _write_table(table: pa.Table, path: str, row_group_size: int) -> None:
    small = [c for c in table.column_names if c in ("client_id", "author_type", "hour_of_day", "position")]
    # Random floats do not compress, and plain binary features read and write faster than compressed ones; the
    # rest (ids, labels, small categoricals) compress well with snappy. Statistics only where they can prune.
    plain = {c for c, t in zip(table.column_names, table.schema.types)
             if pa.types.is_floating(t) or pa.types.is_fixed_size_list(t)}
    pq.write_table(table, path, row_group_size=row_group_size, use_dictionary=small,
                   compression={c: "none" if c in plain else "snappy" for c in table.column_names},
                   write_statistics=[c for c in table.column_names if c not in plain])


def _write_rows(table: pa.Table, path: str, row_group_size: int) -> int:
    _write_table(table, path, row_group_size)
    return table.num_rows


def _write_file(job: _Job) -> str:
    _write_table(_file_table(job), job.path, job.row_group_size)
    return job.path


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
            jobs.append(_Job(seed, s, f, hi - lo, first_id, path, row_group_size))
    # Progress counts whole files as they are written: the rows are drawn inside the workers.
    progress = Progress("generating", sum(job.rows for job in jobs))
    try:
        if processes > 1 and len(jobs) > 1:
            import multiprocessing

            rows_of = {job.path: job.rows for job in jobs}
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for path in pool.imap_unordered(_write_file, jobs):
                    progress.update(rows_of[path])
        else:
            # Writing releases the GIL: the next file's rows are drawn while the last one is written.
            with ThreadPoolExecutor(max_workers=1) as writer:
                pending = None
                for job in jobs:
                    table = _file_table(job)
                    if pending is not None:
                        progress.update(pending.result())
                    pending = writer.submit(_write_rows, table, job.path, job.row_group_size)
                progress.update(pending.result())
    finally:
        progress.close()
        _WORLD = None
    return split_sizes(rows, splits)
