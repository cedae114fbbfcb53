"""Rows drawn from the ground truth, request by request: ids, context, features, display position, and every task's
logit before its bias."""

from __future__ import annotations

import math

import numpy as np

from projects.home.recap.data.synthetic.ground_truth import World
from projects.home.recap.data.synthetic.history import (
    _draw_history,
    _history_lists,
    _history_match,
    _match_candidates,
)
from projects.home.recap.data.synthetic.sampling import (
    _capped_poisson_cdf,
    _matmul,
    _normal,
    _sigmoid_inplace,
)
from projects.home.recap.data.synthetic.spec import _CONTEXT, FACTORS


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
        np.copysign(np.log1p(np.abs(term)), term, out=term)  # log1p(term) for non-negative terms
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
