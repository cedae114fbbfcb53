"""core/rng_state.py: every random generator's state through JSON and back, and one seed for all of them (exact
resume through checkpoints: test_train_loop.py)."""

import json
import random

import numpy as np
import torch

from core.rng_state import rng_state, seed_everything, set_rng_state


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (torch.rand(3), np.random.rand(2).tolist(), random.random())
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand(2).tolist() == expected[1]
    assert random.random() == expected[2]


def test_seed_everything_seeds_torch_numpy_and_python():
    seed_everything(7)
    first = (torch.rand(2), np.random.rand(2).tolist(), random.random())
    seed_everything(7)
    assert torch.equal(torch.rand(2), first[0])
    assert np.random.rand(2).tolist() == first[1] and random.random() == first[2]
