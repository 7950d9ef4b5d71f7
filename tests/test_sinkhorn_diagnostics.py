"""Properties of gpslib.sinkhorn_diagnostics on small, seeded inputs."""

import pytest

from gpslib import sinkhorn_diagnostics as diag


def test_hungarian_is_always_a_permutation_and_argmax_rarely_is():
    table = diag.hard_validity_vs_tau(24, [1.0, 0.1], batch=8)
    assert (table["hungarian_valid"] == 1.0).all()
    assert (table["argmax_valid"] < 1.0).all()


def test_row_error_shrinks_with_iterations():
    table = diag.row_error_vs_iterations(16, [0.5], [1, 5, 50], batch=2)
    errors = table["row_error"].tolist()
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5


def test_clamp_flattens_sharp_scores_and_the_unclamped_probability_domain_overflows():
    table = diag.clamped_vs_ours(64, [0.01], batch=2).set_index("method")
    assert table.loc["ours (log domain)", "nonfinite"] == 0
    assert table.loc["probability domain, no clamp", "nonfinite"] > 0
    assert table.loc["authors (clamped)", "mean_row_max"] < table.loc["ours (log domain)", "mean_row_max"]
    assert table.loc["authors (clamped)", "saturated"] > 0.5


def test_bad_sizes_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="n=0"):
        diag.random_scores(1, 0)
