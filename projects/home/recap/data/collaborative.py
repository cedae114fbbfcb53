"""The synthetic data's optional collaborative signal: hidden per-user and per-author vectors whose dot product moves
every task's logit.

No column carries these vectors (the upstream user/author embeddings are projections of other latent vectors), so
a model can only capture the signal by learning an interaction between its user_id and author_id embeddings: the
yardstick of `recap benchmark ids`. The term joins the other factors before user activity amplifies them all. The
vectors are drawn from a stream of their own, so switching the signal on leaves every other draw of the world as it
was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Each task's loading on the interaction: engagement tasks positive, the negative-feedback tasks negative.
COLLABORATIVE_LOADINGS: dict[str, float] = {
    "is_favorited": 1.0,
    "is_retweeted": 0.9,
    "is_replied": 0.8,
    "is_quoted": 0.7,
    "is_good_clicked": 0.8,
    "is_profile_clicked": 1.0,
    "is_video_playback_50": 0.6,
    "is_shared": 0.8,
    "is_negative_feedback": -0.8,
    "is_report_tweet_clicked": -0.6,
}

_STREAM = 4  # the seed's stream for these draws (the world uses 1, rows 2 and 3)


@dataclass(frozen=True)
class CollaborativeSignal:
    """Hidden vectors of every user [U, K] and author [A, K] and each task's loading [T] on their dot product."""

    user: np.ndarray
    author: np.ndarray
    loadings: np.ndarray

    def interaction(self, user: np.ndarray, author: np.ndarray) -> np.ndarray:
        """Per row, the dot product of its user's and author's hidden vectors (float32 [n], std about the
        strength)."""
        return np.einsum("ij,ij->i", np.take(self.user, user, axis=0), np.take(self.author, author, axis=0))

    def logits(self, interaction: np.ndarray) -> np.ndarray:
        """What the interaction adds to each task's logit, [T, n]."""
        return np.outer(self.loadings, interaction)


def make_collaborative(
    num_users: int, num_authors: int, dim: int, strength: float, tasks: list[str], seed: int
) -> CollaborativeSignal | None:
    """The signal of `dim` hidden dimensions whose dot product has standard deviation `strength` (None when dim is
    0: no signal)."""
    if dim < 0 or not math.isfinite(strength) or strength < 0:
        raise ValueError(f"collaborative_dim must be >= 0 and collaborative_strength finite and >= 0, got {dim} "
                         f"and {strength}")
    if dim == 0:
        return None
    unknown = [t for t in tasks if t not in COLLABORATIVE_LOADINGS]
    if unknown:
        raise ValueError(f"no collaborative loadings for tasks {unknown}; known: {sorted(COLLABORATIVE_LOADINGS)}")
    rng = np.random.default_rng([seed, _STREAM])
    user = rng.standard_normal((num_users, dim), dtype=np.float32)
    # Unit-variance entries give a dot product of variance dim: the author side carries the scale.
    author = rng.standard_normal((num_authors, dim), dtype=np.float32)
    author *= strength / math.sqrt(dim)
    loadings = np.array([COLLABORATIVE_LOADINGS[t] for t in tasks], dtype=np.float32)
    return CollaborativeSignal(user, author, loadings)
