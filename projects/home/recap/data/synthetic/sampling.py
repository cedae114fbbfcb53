"""The random draws the generator is built from: seeded streams, fast normals, Zipf ids, a capped Poisson and the
sigmoid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
