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
With history_ratings, history.action holds ratings 0..4 (1 to 5 stars) instead, drawn around the user's hidden taste
for the item's author (neutral outside their pool), the action weights are -1, -0.5, 0, 0.5, 1 and the logit term
is history_strength * loading * sign(match) log1p|match|: a recently low-rated author counts against a candidate.
Labels are Bernoulli draws from the true probabilities,
which are written as oracle.<label column> so evaluation can compare a model with the best achievable.

The modules, in the order a file is made: spec.py (the shape of the data and the ground truth's constants),
sampling.py (the random draws), ground_truth.py (the ground truth's types), world.py (the ground truth and its task
biases), history.py (interests, histories and the match term), rows.py (one batch of rows and their logits), table.py (labels, oracle columns, the Arrow
table) and writer.py (splits and parquet files). The public names are importable from this package.
"""

from projects.home.recap.data.layout import ORACLE_PREFIX
from projects.home.recap.data.synthetic.ground_truth import Interests, World
from projects.home.recap.data.synthetic.history import (
    HISTORY_ACTIONS,
    HISTORY_COLUMNS,
    HISTORY_LOADINGS,
    NUM_ACTIONS,
)
from projects.home.recap.data.synthetic.spec import (
    BINARY,
    CONTINUOUS,
    FACTORS,
    LABEL_PREFIX,
    LOADINGS,
    TASK_RATES,
    SyntheticSpec,
)
from projects.home.recap.data.synthetic.table import generate_table
from projects.home.recap.data.synthetic.world import make_world
from projects.home.recap.data.synthetic.writer import DEFAULT_SPLITS, generate, split_sizes

__all__ = [
    "BINARY",
    "CONTINUOUS",
    "DEFAULT_SPLITS",
    "FACTORS",
    "HISTORY_ACTIONS",
    "HISTORY_COLUMNS",
    "HISTORY_LOADINGS",
    "LABEL_PREFIX",
    "LOADINGS",
    "NUM_ACTIONS",
    "ORACLE_PREFIX",
    "TASK_RATES",
    "Interests",
    "SyntheticSpec",
    "World",
    "generate",
    "generate_table",
    "make_world",
    "split_sizes",
]
