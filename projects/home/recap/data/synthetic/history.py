"""Engagement histories: each user's interests, one history per request drawn from them, candidates matched to
their request's history, the match term every task's logit gains, and the history columns' values."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from projects.home.recap.data.synthetic.ground_truth import Interests, World
from projects.home.recap.data.synthetic.sampling import _rng, _Zipf

if TYPE_CHECKING:
    from projects.home.recap.data.synthetic.spec import SyntheticSpec

# Engagement history: the action types of history.action, their weights in the match term, and each task's loading
# on log1p(match) (engagements respond positively, negative feedback and reports negatively).
HISTORY_ACTIONS = ("favorite", "reply", "retweet", "share")
NUM_ACTIONS = len(HISTORY_ACTIONS)
HISTORY_COLUMNS = ("history.author_id", "history.hashtag", "history.action", "history.age_hours")
_ACTION_WEIGHTS = np.array([1.0, 1.5, 1.2, 1.3], dtype=np.float32)
_ACTION_RATES = np.array([0.6, 0.1, 0.2, 0.1])
# Ratings (history_ratings): history.action is a rating 0..4 (1 to 5 stars) and weighs the match term by its sign.
NUM_RATINGS = 5
_RATING_WEIGHTS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
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
    tastes = (_rng(seed, 6).standard_normal((spec.num_users, _INTEREST_POOL), dtype=np.float32)
              if spec.history_ratings else None)
    return Interests(authors.astype(np.int32).reshape(spec.num_users, _INTEREST_POOL),
                     hashtags.astype(np.int32).reshape(spec.num_users, _INTEREST_POOL),
                     np.array([HISTORY_LOADINGS[t] for t, _ in spec.tasks], dtype=np.float32), tastes)

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

    def items(pool: np.ndarray, popularity: _Zipf, tastes: np.ndarray | None = None) -> np.ndarray:
        # Slot floor(pool * u^2): the first slots, a user's favourites, are the likeliest (35%, 15%, ... 6.5%).
        slots = rng.random((r, max_length), dtype=np.float32)
        slots *= slots
        slots *= _INTEREST_POOL
        slots = np.minimum(slots.astype(np.int64), _INTEREST_POOL - 1)
        values = np.take_along_axis(pool[user], slots, axis=1).astype(np.int64)
        outside = rng.random((r, max_length), dtype=np.float32) >= _FROM_POOL
        outside &= real  # padding needs no draws of its own
        values[outside] = popularity.sample(rng, int(outside.sum()))
        if tastes is not None:  # the rating of each item: the user's taste for a pool author, else neutral
            taste = np.take_along_axis(tastes[user], slots, axis=1)
            taste[outside] = 0.0
            noise = rng.standard_normal((r, max_length), dtype=np.float32)
            ratings.append(np.clip(np.rint(2.0 + 1.2 * taste + 0.7 * noise), 0, NUM_RATINGS - 1).astype(np.int64))
        return values

    ratings: list[np.ndarray] = []
    author = items(interests.authors, world.authors, interests.tastes)
    hashtag = items(interests.hashtags, world.hashtags)
    uniform = rng.random((r, max_length), dtype=np.float32)
    action = np.zeros((r, max_length), dtype=np.int64)
    for threshold in np.cumsum(_ACTION_RATES)[:-1]:  # the inverse cdf of the action rates, one comparison a type
        action += uniform >= threshold
    if ratings:
        action = ratings[0]
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
    weight *= (_RATING_WEIGHTS if world.interests.tastes is not None else _ACTION_WEIGHTS)[history.action]
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
