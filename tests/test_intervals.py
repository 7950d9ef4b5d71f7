"""Properties of gpslib.intervals: t intervals over seeds, bootstrap intervals over prompts."""

import math

import numpy as np
import pytest
from scipy import stats

from gpslib.intervals import bootstrap_ci, mean_ci, paired_bootstrap_difference, paired_difference


def test_mean_ci_matches_the_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3), rel=1e-12)
    assert math.isnan(mean_ci([1.0])[1])
    assert paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_bootstrap_interval_of_a_proportion_is_near_the_normal_interval_and_repeatable():
    rng = np.random.default_rng(0)
    x = (rng.random(2000) < 0.3).astype(float)
    mean, low, high = bootstrap_ci(x, n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(mean * (1 - mean) / x.size)
    assert low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_ci(x, n_boot=4000, seed=1) == (mean, low, high)


def test_paired_bootstrap_excludes_zero_for_a_real_shift_and_includes_it_for_none():
    rng = np.random.default_rng(2)
    base = rng.random((3, 600))
    shifted = base + 0.05 + 0.01 * rng.standard_normal((3, 600))
    mean, low, high = paired_bootstrap_difference(shifted, base, n_boot=500)
    assert mean == pytest.approx(0.05, abs=0.005) and low > 0
    _, low, high = paired_bootstrap_difference(base + 0.02 * rng.standard_normal((3, 600)), base, n_boot=500)
    assert low < 0 < high


def test_seed_to_seed_spread_widens_the_paired_interval():
    rng = np.random.default_rng(3)
    base = rng.random((4, 400))
    steady = base + 0.03
    jumpy = base + np.array([[0.0], [0.06], [-0.03], [0.09]])  # the same mean shift, varying by seed
    width = lambda a: np.subtract(*paired_bootstrap_difference(a, base, n_boot=500)[2:0:-1])  # noqa: E731
    assert width(jumpy) > 5 * width(steady)


@pytest.mark.parametrize("call, match", [
    (lambda: bootstrap_ci([]), "at least one"),
    (lambda: bootstrap_ci([1.0], confidence=1.5), "confidence=1.5"),
    (lambda: paired_bootstrap_difference(np.ones((2, 3)), np.ones((3, 3))), r"\(2, 3\) and \(3, 3\)"),
])
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()
