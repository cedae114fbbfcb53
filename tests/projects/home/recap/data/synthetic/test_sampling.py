"""The generator's random draws: normals, Zipf ids and the capped Poisson count of hashtags."""

from __future__ import annotations

import math

import numpy as np
import pytest

from projects.home.recap.data.synthetic.sampling import _capped_poisson_cdf, _normal, _rng, _Zipf


def test_normal_draws_have_the_normal_moments_and_tails():
    z = _normal(_rng(0), (1001, 101), 2.0)  # an odd count: the last Box-Muller pair is cut
    assert z.shape == (1001, 101) and z.dtype == np.float32 and np.isfinite(z).all()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 2.0) < 0.02
    assert abs((np.abs(z) > 2 * 1.959964).mean() - 0.05) < 0.003
    half = z.size // 2  # the two members of a pair land half the array apart: they must be uncorrelated
    assert abs(np.corrcoef(z.reshape(-1)[:half], z.reshape(-1)[half : 2 * half])[0, 1]) < 0.02


def test_zipf_sampling_is_the_inverse_cdf():
    zipf = _Zipf.make(1000, 1.1, 3, 1)
    assert zipf.cdf[0] == pytest.approx(1 / sum(i**-1.1 for i in range(1, 1001)))
    ids = zipf.sample(_rng(4), 20_000)
    assert np.array_equal(ids, np.searchsorted(zipf.cdf, _rng(4).random(20_000)))


def test_capped_poisson_cdf():
    e = math.exp(-1)
    cdf = _capped_poisson_cdf(1.0, 3)
    assert np.allclose(cdf, [e, 2 * e, 2.5 * e])
    # The count drawn for a uniform u is the number of these at or below u, at most the cap.
    assert np.searchsorted(cdf, [0.1, 0.5, 0.8, 0.95], side="right").tolist() == [0, 1, 2, 3]
    assert _capped_poisson_cdf(1.0, 0).size == 0  # cap 0: no hashtags
