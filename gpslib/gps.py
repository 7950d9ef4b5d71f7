"""Gumbel Permutation Sinkformer (paper Section 3.2, Algorithm 2, Figure 2).

A stack of single-head transformer blocks over the tokens; the last block's
attention scores ``S = Q K^T / sqrt(D) + alpha * I`` plus Gumbel noise, divided by
``tau``, go through Sinkhorn to a soft permutation ``P`` (B, N, N), optionally made
hard with a straight-through estimator. ``P @ tokens`` reorders the tokens
(the convention of :mod:`gpslib.sinkhorn`).

:class:`GPSSettings` holds every setting of GPS and of its training schedule with its one
default (the paper's and the authors' code's values): the model config
(:class:`gpslib.reordering_config.ReorderingLlavaConfig`), the fine-tuning loop and the
permutation-learning experiment all read them from there.

Only the last block's scores reach ``P``: in Algorithm 2 (and the authors' code) the
last block also computes V, a feed-forward layer and two LayerNorms whose outputs
feed nothing, so those parameters never get a gradient (which breaks
DistributedDataParallel). Here the last block is a score head with Q and K only;
the first ``num_layers - 1`` blocks are full blocks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from gpslib.comparison_only import sinkhorn_clamped_authors
from gpslib.sinkhorn import HARD_METHODS, gumbel_noise, hard_permutation, sinkhorn

__all__ = ["SINKHORN_IMPLS", "GPSSettings", "GPSBlock", "GPSScoreHead", "GumbelPermutationSinkformer"]

SINKHORN_IMPLS = ("ours", "authors")


@dataclasses.dataclass(frozen=True)
class GPSSettings:
    """GPS and its training schedule (paper Section 3.2 and 4.5; the authors' code).

    Architecture: ``num_layers`` blocks (the last is the score head), ``ffn_dim`` (None:
    4 x the token width; the paper uses 8192 at width 2048), ``sinkhorn_iters``, the identity
    scale ``alpha``, the Gumbel ``noise_scale`` (0 = none), ``sinkhorn_impl`` (``"ours"``,
    or ``"authors"`` for the ablation) and ``hard_method`` (:data:`gpslib.sinkhorn.HARD_METHODS`).
    Schedule: tau anneals from ``tau_start`` to ``tau_end`` (cosine,
    :func:`gpslib.sinkhorn.tau_schedule`); the straight-through hard permutation is used
    from the fraction ``hard_after`` of the steps on. Raises ValueError naming a bad value.
    """

    num_layers: int = 4
    ffn_dim: int | None = None
    sinkhorn_iters: int = 50
    alpha: float = 0.5
    noise_scale: float = 1.0
    sinkhorn_impl: str = "ours"
    hard_method: str = "hungarian"
    tau_start: float = 2.0
    tau_end: float = 0.1
    hard_after: float = 0.5

    def __post_init__(self):
        for name in ("num_layers", "sinkhorn_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPS {name} must be an int >= 1; got {name}={value!r}")
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or self.ffn_dim < 1):
            raise ValueError(f"GPS ffn_dim must be None or an int >= 1; got ffn_dim={self.ffn_dim!r}")
        if not (isinstance(self.noise_scale, (int, float)) and self.noise_scale >= 0):
            raise ValueError(f"GPS noise_scale must be >= 0; got noise_scale={self.noise_scale!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise ValueError(f"GPS alpha must be a finite number; got alpha={self.alpha!r}")
        if self.sinkhorn_impl not in SINKHORN_IMPLS:
            raise ValueError(f"GPS sinkhorn_impl must be one of {SINKHORN_IMPLS}; got {self.sinkhorn_impl!r}")
        if self.hard_method not in HARD_METHODS:
            raise ValueError(f"GPS hard_method must be one of {HARD_METHODS}; got {self.hard_method!r}")
        for name in ("tau_start", "tau_end"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"GPS {name} must be a finite number > 0; got {name}={value!r}")
        if not (isinstance(self.hard_after, (int, float)) and 0 <= self.hard_after <= 1):
            raise ValueError(f"GPS hard_after must lie in [0, 1]; got hard_after={self.hard_after!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "GPSSettings":
        """Settings from a dict (e.g. a saved config's ``gps``); raises ValueError naming unknown keys."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown GPS settings {unknown}; valid ones are {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
        settings: the architecture (:class:`GPSSettings`: ``num_layers`` blocks, the last
            the Q/K score head; ``ffn_dim``; ``sinkhorn_iters``; ``alpha``, the identity
            scale of the residual permutation; ``noise_scale``; ``sinkhorn_impl``;
            ``hard_method``). Its schedule fields are read by the training loops, not here.
        dropout: dropout on attention weights, residuals and inside the FFN.
    """

    def __init__(self, dim: int, settings: GPSSettings | None = None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1; got dim={dim!r}")
        self.settings = settings = settings if settings is not None else GPSSettings()
        ffn_dim = 4 * dim if settings.ffn_dim is None else settings.ffn_dim
        self.dim = dim
        self.blocks = nn.ModuleList([GPSBlock(dim, ffn_dim, dropout) for _ in range(settings.num_layers - 1)])
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
        return self.head(x) + self.settings.alpha * eye  # (B, N, N)

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
        cfg = self.settings
        if noise and cfg.noise_scale > 0:
            s = s + gumbel_noise(s.shape, generator, s.device, s.dtype, cfg.noise_scale)
        log_alpha = s / tau  # (B, N, N)
        if cfg.sinkhorn_impl == "authors":
            if mask is not None:
                raise ValueError("mask is not supported with sinkhorn_impl='authors'")
            P = sinkhorn_clamped_authors(log_alpha, n_iters=cfg.sinkhorn_iters)
        else:
            P = sinkhorn(log_alpha, n_iters=cfg.sinkhorn_iters, mask=mask)
        if hard:
            P = hard_permutation(P, method=cfg.hard_method)
        return P
