"""Implementations kept only to be compared against: the authors' schemes and textbook loops.

Nothing in the library's own code path calls these (except the ``sinkhorn_impl="authors"``
switch of :class:`gpslib.gps.GumbelPermutationSinkformer`, which exists for the ablation of
notebook 03). They are here so that notebook 03, the tests and ``benchmarks/`` measure the
library against one copy of each, not against copies of their own:

* :func:`cosine_reorder_per_token`: TokenMixer (paper Algorithm 1) in the authors' style, the
  similarity of one sample by broadcasting and a Python loop over its image tokens; the
  reference of :func:`gpslib.tokenmixer.cosine_reorder` and of ``benchmarks/bench_tokenmixer.py``;
* :func:`sinkhorn_clamped_authors`: the authors' Sinkhorn (paper Algorithm 2, line 11, as their
  code computes it): clamp log_alpha to [-15, 15], exponentiate, divide rows and columns,
  stop early;
* :func:`sinkhorn_probability_domain`: a fixed-length probability-domain loop without clamp,
  the speed yardstick of ``benchmarks/bench_sinkhorn.py`` (what the clamp tries to protect);
* :func:`sinkhorn_matrix_logsumexp`: the textbook log-domain matrix loop, the numerical
  reference of :func:`gpslib.sinkhorn.sinkhorn` (plain autograd through it is the reference
  gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "cosine_reorder_per_token",
    "sinkhorn_clamped_authors",
    "sinkhorn_probability_domain",
    "sinkhorn_matrix_logsumexp",
]


def cosine_reorder_per_token(image_embeds: torch.Tensor, text_embeds: torch.Tensor, threshold: float,
                             placement: str = "before") -> torch.Tensor:
    """Algorithm 1 as the authors wrote it, for one sample: a loop over the image tokens.

    image_embeds (M, D); text_embeds (N, D). The similarity is ``F.cosine_similarity`` of
    every (text, image) pair by broadcasting (eps 1e-8); each image token goes to the bucket
    of its most similar text token (the first on ties) when that similarity reaches
    ``threshold``, else to the unmatched list; the sequence is the unmatched image tokens,
    then per text token its bucket before it (``"before"``) or after it (``"after"``).
    Returns order (M + N,) long, gather indices into ``cat([image, text])``.
    """
    m, n = image_embeds.shape[0], text_embeds.shape[0]
    unmatched: list[int] = []
    buckets: list[list[int]] = [[] for _ in range(n)]
    if n:
        sim = F.cosine_similarity(text_embeds.unsqueeze(1), image_embeds.unsqueeze(0), dim=2, eps=1e-8)  # (N, M)
        best, index = sim.max(dim=0)  # (M,)
    for k in range(m):
        if n and float(best[k]) >= threshold:
            buckets[int(index[k])].append(k)
        else:
            unmatched.append(k)
    sequence = list(unmatched)
    for j in range(n):
        sequence += buckets[j] + [m + j] if placement == "before" else [m + j] + buckets[j]
    return torch.tensor(sequence, dtype=torch.long)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def sinkhorn_clamped_authors(log_alpha: torch.Tensor, n_iters: int = 50, clamp_range: tuple[float, float] = (-15.0, 15.0),
                             tol: float = 1e-6, eps: float = 1e-8) -> torch.Tensor:
    """The authors' scheme: clamp, exp, probability-domain loop with an early exit.

    log_alpha (..., N, N) -> P (..., N, N). Clamps ``log_alpha`` to ``clamp_range``, then
    alternates row / column division (``+ eps``) and stops as soon as no entry moved by
    ``tol`` in one iteration (a host sync per iteration).
    """
    if log_alpha.dim() < 2 or log_alpha.shape[-1] != log_alpha.shape[-2]:
        raise ValueError(f"log_alpha must have shape (..., N, N); got {tuple(log_alpha.shape)}")
    alpha = torch.clamp(_float(log_alpha), *clamp_range).exp()
    for _ in range(n_iters):
        prev = alpha
        alpha = alpha / (alpha.sum(dim=-1, keepdim=True) + eps)
        alpha = alpha / (alpha.sum(dim=-2, keepdim=True) + eps)
        if torch.all(torch.abs(alpha - prev) < tol):
            break
    return alpha


def sinkhorn_probability_domain(log_alpha: torch.Tensor, n_iters: int = 50, eps: float = 1e-8) -> torch.Tensor:
    """exp, then exactly ``n_iters`` row / column divisions (``+ eps``); no clamp, no early exit.

    log_alpha (..., N, N) -> P (..., N, N). Overflows (inf / nan) where ``exp`` does.
    """
    alpha = _float(log_alpha).exp()
    for _ in range(n_iters):
        alpha = alpha / (alpha.sum(dim=-1, keepdim=True) + eps)
        alpha = alpha / (alpha.sum(dim=-2, keepdim=True) + eps)
    return alpha


def sinkhorn_matrix_logsumexp(log_alpha: torch.Tensor, n_iters: int = 50) -> torch.Tensor:
    """The textbook loop ``X -= logsumexp(X, -1); X -= logsumexp(X, -2)``; (..., N, N) -> P."""
    x = _float(log_alpha)
    for _ in range(n_iters):
        x = x - torch.logsumexp(x, dim=-1, keepdim=True)
        x = x - torch.logsumexp(x, dim=-2, keepdim=True)
    return x.exp()
