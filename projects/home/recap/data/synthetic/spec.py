"""The synthetic data's shape (SyntheticSpec), its column names, and the ground truth's fixed constants: the demo
tasks and their positive rates, the shared factors and each task's loadings on them."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    # history.action holds ratings 0..4 (1 to 5 stars, following the user's taste for the author) instead of
    # engagement types; a rating weighs the match term by -1, -0.5, 0, 0.5, 1, so a low rating pushes it down.
    history_ratings: bool = False

    def __post_init__(self) -> None:
        if self.candidates_per_request < 1:
            raise ValueError(f"candidates_per_request must be at least 1, got {self.candidates_per_request}")
        if self.history_length < 0:
            raise ValueError(f"history_length must not be negative, got {self.history_length}")
        if not math.isfinite(self.history_strength):
            raise ValueError(f"history_strength must be finite, got {self.history_strength}")
        if not 0.0 <= self.history_match_rate <= 1.0:
            raise ValueError(f"history_match_rate must be in [0, 1], got {self.history_match_rate}")
