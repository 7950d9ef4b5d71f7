"""Gumbel Permutation Sinkformer (paper Section 3.2, Algorithm 2, Figure 2).

A stack of single-head transformer blocks over the tokens; the last block's
attention scores ``S = Q K^T / sqrt(D) + alpha * I`` plus Gumbel noise, divided by
``tau``, go through Sinkhorn to a soft permutation ``P`` (B, N, N), optionally made
hard with a straight-through estimator. ``P @ tokens`` reorders the tokens
(DESIGN.md, "One permutation convention").

Only the last block's scores reach ``P``: in Algorithm 2 (and the authors' code) the
last block also computes V, a feed-forward layer and two LayerNorms whose outputs
feed nothing, so those parameters never get a gradient (which breaks
DistributedDataParallel). Here the last block is a score head with Q and K only;
the first ``num_layers - 1`` blocks are full blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpslib.sinkhorn import gumbel_noise, hard_permutation, sinkhorn, sinkhorn_clamped_authors

__all__ = ["GPSBlock", "GPSScoreHead", "GumbelPermutationSinkformer"]


def _key_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    """(B, N) bool mask -> (B, 1, N) additive bias, -inf on padded keys (0.0 if no mask)."""
    if mask is None:
        return 0.0
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf")).unsqueeze(1)  # (B, 1, N)


class GPSScoreHead(nn.Module):
    """Single-head scores ``A_O = Q K^T / sqrt(D)``: x (B, N, D) -> (B, N, N)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(self.dim)  # (B, N, N)


class GPSBlock(GPSScoreHead):
    """Algorithm 2, lines 2-7: X <- LN(X + softmax(A_O) V); X <- LN(X + FFN(X)).

    x (B, N, D), mask (B, N) bool or None -> x (B, N, D).
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__(dim)
        self.v = nn.Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = super().forward(x) + _key_bias(mask, x.dtype)  # (B, N, N)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        x = self.norm1(x + self.dropout(attn @ self.v(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class GumbelPermutationSinkformer(nn.Module):
    """GPS: tokens (B, N, D) -> soft or hard permutation matrix P (B, N, N).

    Args:
        dim: token width D.
        num_layers: number of blocks L (>= 1); the last is the Q/K score head.
        ffn_dim: feed-forward width (default 4 * dim; the paper uses 8192 at D = 2048).
        sinkhorn_iters: Sinkhorn iterations T.
        alpha: identity scale added to the scores (residual permutation).
        dropout: dropout on attention weights, residuals and inside the FFN.
        noise_scale: Gumbel noise factor (Mena et al. 2018); 0 = deterministic.
        sinkhorn_impl: ``"ours"`` (log domain) or ``"authors"`` (clamped, comparison only).
        memory_efficient: Sinkhorn backward storing only the normaliser vectors.
        hard_method: ``"hungarian"``, ``"argmax"`` (authors) or ``"auto"``.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 4,
        ffn_dim: int | None = None,
        sinkhorn_iters: int = 50,
        alpha: float = 0.5,
        dropout: float = 0.0,
        noise_scale: float = 1.0,
        sinkhorn_impl: str = "ours",
        memory_efficient: bool = False,
        hard_method: str = "hungarian",
    ):
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1; got {num_layers!r}")
        if not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be an int >= 1; got {sinkhorn_iters!r}")
        if sinkhorn_impl not in ("ours", "authors"):
            raise ValueError(f"sinkhorn_impl must be 'ours' or 'authors'; got {sinkhorn_impl!r}")
        if hard_method not in ("hungarian", "argmax", "auto"):
            raise ValueError(f"hard_method must be 'hungarian', 'argmax' or 'auto'; got {hard_method!r}")
        if not noise_scale >= 0:
            raise ValueError(f"noise_scale must be >= 0; got {noise_scale!r}")
        ffn_dim = 4 * dim if ffn_dim is None else ffn_dim
        self.dim, self.alpha, self.noise_scale = dim, alpha, noise_scale
        self.sinkhorn_iters, self.sinkhorn_impl = sinkhorn_iters, sinkhorn_impl
        self.memory_efficient, self.hard_method = memory_efficient, hard_method
        self.blocks = nn.ModuleList([GPSBlock(dim, ffn_dim, dropout) for _ in range(num_layers - 1)])
        self.head = GPSScoreHead(dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # as the authors: Xavier-uniform, zero bias
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def scores(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """S = A_O + alpha * I of the last block: x (B, N, D) -> S (B, N, N)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, N, {self.dim}); got {tuple(x.shape)}")
        for block in self.blocks:
            x = block(x, mask)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # (N, N)
        return self.head(x) + self.alpha * eye  # (B, N, N)

    def forward(
        self,
        x: torch.Tensor,
        tau: float = 1.0,
        hard: bool = False,
        noise: bool = True,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Algorithm 2. x (B, N, D), mask (B, N) bool (True = real) -> P (B, N, N).

        ``noise=False, hard=True`` is the inference path (deterministic Hungarian
        permutation with ``hard_method="hungarian"``).
        """
        if not tau > 0:
            raise ValueError(f"tau must be > 0; got {tau!r}")
        s = self.scores(x, mask)  # (B, N, N)
        if noise and self.noise_scale > 0:
            s = s + gumbel_noise(s.shape, generator, s.device, s.dtype, self.noise_scale)
        log_alpha = s / tau  # (B, N, N)
        if self.sinkhorn_impl == "authors":
            if mask is not None:
                raise ValueError("mask is not supported with sinkhorn_impl='authors'")
            P = sinkhorn_clamped_authors(log_alpha, n_iters=self.sinkhorn_iters)
        else:
            P = sinkhorn(log_alpha, n_iters=self.sinkhorn_iters, mask=mask,
                         memory_efficient=self.memory_efficient)
        if hard:
            P = hard_permutation(P, method=self.hard_method)
        return P
