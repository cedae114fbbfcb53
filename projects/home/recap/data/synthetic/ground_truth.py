"""The ground truth's types, shared by the modules that make it (world.py, history.py) and draw rows from it
(rows.py, table.py): World, everything fixed by the seed, and Interests, the users' preferred authors and hashtags
that their engagement histories mostly come from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from projects.home.recap.data.collaborative import CollaborativeSignal
from projects.home.recap.data.synthetic.sampling import _Zipf
from projects.home.recap.data.synthetic.spec import SyntheticSpec


@dataclass(frozen=True)
class Interests:
    """Each user's preferred authors and hashtags (indices, [U, pool]), which their engagement history mostly comes
    from, and each task's loading on the history term ([T])."""

    authors: np.ndarray
    hashtags: np.ndarray
    loadings: np.ndarray
    # With ratings: the user's taste for each pool author ([U, pool], N(0, 1)), which their ratings follow.
    tastes: np.ndarray | None = None


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
