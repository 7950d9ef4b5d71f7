"""Numerical diagnostics of Sinkhorn normalisation and hard permutations (notebook 03).

Each function draws random score matrices ``S ~ N(0, 1)`` (B, N, N), divides them by a
temperature and reports one property as a tidy DataFrame:

* :func:`hard_validity_vs_tau`: how often the authors' row argmax of P is a permutation,
  against the Hungarian algorithm (always one);
* :func:`row_error_vs_iterations`: how far P's rows are from summing to one after
  ``n_iters`` iterations (columns are exact after the last column step), i.e. how many
  iterations a temperature needs;
* :func:`clamped_vs_ours`: the authors' clamped probability-domain scheme against the
  log-domain one and an unclamped probability-domain loop: sharpness (mean row max),
  entries saturated by the clamp, and NaN/Inf counts.
"""

from __future__ import annotations

import pandas as pd
import torch

from gpslib.comparison_only import sinkhorn_clamped_authors, sinkhorn_probability_domain
from gpslib.sinkhorn import hard_permutation, is_permutation, row_error, sinkhorn

__all__ = ["random_scores", "hard_validity_vs_tau", "row_error_vs_iterations", "clamped_vs_ours"]


def random_scores(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Standard normal scores (batch, n, n), float32, from a seeded generator."""
    if batch < 1 or n < 1:
        raise ValueError(f"batch and n must be >= 1; got batch={batch}, n={n}")
    return torch.randn(batch, n, n, generator=torch.Generator().manual_seed(seed))


def hard_validity_vs_tau(n: int, taus, batch: int = 16, n_iters: int = 50, seed: int = 0) -> pd.DataFrame:
    """Fraction of valid permutations from row argmax and from Hungarian, per tau.

    Columns: tau, argmax_valid, hungarian_valid, agree (fraction of rows where both pick
    the same column).
    """
    scores = random_scores(batch, n, seed)
    rows = []
    for tau in taus:
        P = sinkhorn(scores / tau, n_iters=n_iters)
        argmax, valid = hard_permutation(P, method="argmax", return_valid=True)
        hungarian = hard_permutation(P, method="hungarian")
        rows.append({
            "tau": float(tau),
            "argmax_valid": float(valid.float().mean()),
            "hungarian_valid": float(is_permutation(hungarian).float().mean()),
            "agree": float((argmax.argmax(-1) == hungarian.argmax(-1)).float().mean()),
        })
    return pd.DataFrame(rows)


def row_error_vs_iterations(n: int, taus, iterations, batch: int = 4, seed: int = 0) -> pd.DataFrame:
    """Max |row sum - 1| of the log-domain Sinkhorn after each number of iterations, per tau.

    Columns: tau, n_iters, row_error.
    """
    scores = random_scores(batch, n, seed)
    return pd.DataFrame([
        {"tau": float(tau), "n_iters": int(k), "row_error": float(row_error(sinkhorn(scores / tau, n_iters=int(k))).max())}
        for tau in taus for k in iterations
    ])


def clamped_vs_ours(n: int, taus, batch: int = 4, n_iters: int = 50, seed: int = 0) -> pd.DataFrame:
    """The authors' clamped scheme, ours and an unclamped probability loop, per tau.

    Columns: tau, method, mean_row_max (1 = a hard permutation, 1/N = uniform),
    saturated (fraction of log_alpha entries outside the clamp's [-15, 15]), nonfinite
    (count of NaN/Inf entries of P), row_error.
    """
    scores = random_scores(batch, n, seed)
    rows = []
    for tau in taus:
        log_alpha = scores / tau
        saturated = float((log_alpha.abs() > 15).float().mean())
        for method, P in (
            ("ours (log domain)", sinkhorn(log_alpha, n_iters=n_iters)),
            ("authors (clamped)", sinkhorn_clamped_authors(log_alpha, n_iters=n_iters)),
            ("probability domain, no clamp", sinkhorn_probability_domain(log_alpha, n_iters)),
        ):
            finite = torch.isfinite(P)
            rows.append({
                "tau": float(tau), "method": method,
                "mean_row_max": float(P.nan_to_num(0.0).amax(-1).mean()),
                "saturated": saturated if method.startswith("authors") else 0.0,
                "nonfinite": int((~finite).sum()),
                "row_error": float(row_error(P.nan_to_num(0.0)).max()),
            })
    return pd.DataFrame(rows)
