"""Intervals for every difference this project calls real (paper Section 4.4, Table 3, and beyond).

The paper reports single runs. Here a verdict is a measurement with an interval: over
seeds (:func:`mean_ci`, :func:`paired_difference`: Student t) and over prompts
(:func:`bootstrap_ci`, :func:`paired_bootstrap_difference`: percentile bootstrap with a
seeded generator, so a rerun gives the same interval).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "paired_difference", "bootstrap_ci", "paired_bootstrap_difference"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval (NaN half-width for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value; got none")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got confidence={confidence}")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of ``a - b`` over paired seeds and its CI half-width; raises ValueError on unequal lengths."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths; got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], confidence)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got confidence={confidence}")


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and the percentile-bootstrap interval of the mean: (mean, low, high).

    Resamples the values (e.g. per-question correctness) with replacement ``n_boot`` times
    from a generator seeded with ``seed``. Raises ValueError on no values.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value; got none")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(low), float(high)


def paired_bootstrap_difference(a, b, confidence: float = 0.95, n_boot: int = 2000,
                                seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its paired bootstrap interval over seeds and prompts: (mean, low, high).

    a, b: (S, P) arrays, S seeds (training runs) by P prompts (the same prompts, the same
    seeds in both), or (P,) for one seed. Each bootstrap draw resamples the seeds with
    replacement and, independently, the prompts with replacement, and keeps the pairing
    of a and b on both: the interval covers the spread over training seeds and over the
    choice of prompts.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be non-empty arrays of one shape (seeds, prompts); got {a.shape} and {b.shape}")
    _check_confidence(confidence)
    d = a - b  # (S, P)
    s, p = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(n_boot):
        seeds = rng.integers(0, s, size=s)
        prompts = rng.integers(0, p, size=p)
        means[i] = d[np.ix_(seeds, prompts)].mean()
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)
