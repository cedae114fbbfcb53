"""The ground truth drawn for a seed: per-id effects and latent vectors, feature loadings and the task biases solved
for the target positive rates (its type, World, is in ground_truth.py)."""

from __future__ import annotations

import math

import numpy as np

from projects.home.recap.data.collaborative import make_collaborative
from projects.home.recap.data.synthetic.ground_truth import World
from projects.home.recap.data.synthetic.history import _make_interests
from projects.home.recap.data.synthetic.rows import _draw
from projects.home.recap.data.synthetic.sampling import _matmul, _rng, _sigmoid, _Zipf
from projects.home.recap.data.synthetic.spec import _CONTEXT, FACTORS, LOADINGS, SyntheticSpec


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
