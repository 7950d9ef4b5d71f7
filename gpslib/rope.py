"""Rotary position embedding (RoPE) and the paper's positional-noise demonstration.

The Introduction of the paper measures the pre-softmax attention score of two
related tokens ``q`` and ``k`` (d = 2048, base 10000): without RoPE, when the
two sit next to each other, and when the image token sits far before the
text token. This module computes that demonstration exactly
(:func:`attention_score`), its batched form over many pairs and distances
(:func:`score_vs_distance`), and the same score through transformers' own
LLaMA rotary embedding (:func:`hf_attention_score`), which pairs dimension
``i`` with ``i + d/2`` ("half-split") instead of ``2i`` with ``2i + 1``
("interleaved"); :func:`interleaved_to_half_split` maps one layout to the
other.

Convention: dimension pair ``(2i, 2i+1)`` at position ``pos`` is rotated by
angle ``pos * base**(-2i/d)``; the score is ``(R q) . (R k) / sqrt(d)``. Since
rotations compose, the score depends only on ``pos_k - pos_q``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from gpslib.tokenmixer import grouped_order

__all__ = [
    "rope_frequencies",
    "rotate",
    "attention_score",
    "score_vs_distance",
    "paired_scores",
    "correlated_pairs",
    "interleaved_to_half_split",
    "hf_attention_score",
    "layout_pair_scores",
    "distance_curves",
    "grouped_prompt_order",
]


def _check_dim(d: int) -> None:
    if d <= 0 or d % 2:
        raise ValueError(f"RoPE needs an even, positive dimension; got d={d}")


def _check_base(base: float) -> None:
    if not base > 1.0:
        raise ValueError(f"RoPE base must be > 1; got base={base}")


def rope_frequencies(d: int, base: float = 10000.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Angular frequency of each dimension pair: ``base**(-2i/d)``, shape (d/2,)."""
    _check_dim(d)
    _check_base(base)
    return base ** (-torch.arange(0, d, 2, dtype=dtype) / d)


def rotate(x: torch.Tensor, pos: torch.Tensor | float, base: float = 10000.0) -> torch.Tensor:
    """Rotate interleaved pairs ``(2i, 2i+1)`` of ``x`` by ``pos * base**(-2i/d)``.

    x: (..., d); pos: a number or a tensor broadcastable to x's leading shape
    ``(...)``. Returns (..., d) in x's dtype (computed in float64).
    """
    d = x.shape[-1]
    freqs = rope_frequencies(d, base)  # (d/2,)
    pos = torch.as_tensor(pos, dtype=torch.float64)
    angle = pos[..., None] * freqs  # (..., d/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x64 = x.to(torch.float64)
    x0, x1 = x64[..., 0::2], x64[..., 1::2]  # (..., d/2) each
    out = torch.empty_like(x64)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out.to(x.dtype)


def attention_score(q, k, pos_q: float | None, pos_k: float | None, base: float = 10000.0) -> float:
    """The paper's demonstration: ``(R_{pos_q} q) . (R_{pos_k} k) / sqrt(d)``.

    q, k: vectors of shape (d,), numpy arrays or torch tensors, d even.
    ``pos_q = pos_k = None`` gives the score without RoPE, ``q . k / sqrt(d)``.
    Computed in float64; returns a Python float.
    """
    q_t = torch.as_tensor(np.asarray(q) if not isinstance(q, torch.Tensor) else q, dtype=torch.float64)
    k_t = torch.as_tensor(np.asarray(k) if not isinstance(k, torch.Tensor) else k, dtype=torch.float64)
    if q_t.ndim != 1 or q_t.shape != k_t.shape:
        raise ValueError(f"q and k must be vectors of one shape (d,); got {tuple(q_t.shape)} and {tuple(k_t.shape)}")
    d = q_t.shape[0]
    _check_dim(d)
    if (pos_q is None) != (pos_k is None):
        raise ValueError(f"give both positions or neither; got pos_q={pos_q}, pos_k={pos_k}")
    if pos_q is not None:
        q_t, k_t = rotate(q_t, pos_q, base), rotate(k_t, pos_k, base)
    return float(q_t @ k_t / math.sqrt(d))


def _pair_terms(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair closed-form terms ``(dot, cross)``, each (P, d/2)."""
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be (P, d); got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_dim(q.shape[-1])
    q64, k64 = q.to(torch.float64), k.to(torch.float64)
    dot = q64[:, 0::2] * k64[:, 0::2] + q64[:, 1::2] * k64[:, 1::2]  # (P, d/2)
    cross = q64[:, 1::2] * k64[:, 0::2] - q64[:, 0::2] * k64[:, 1::2]  # (P, d/2)
    return dot, cross


def score_vs_distance(q: torch.Tensor, k: torch.Tensor, distances, base: float = 10000.0) -> torch.Tensor:
    """RoPE score of many (q, k) pairs at many relative distances, at once.

    q, k: (P, d) pairs; distances: (L,) values of ``pos_k - pos_q`` (for a
    query attending to an earlier key, negative). Returns (P, L) float64
    scores ``(R q).(R k)/sqrt(d)``. Uses the closed form
    ``sum_i [(q0 k0 + q1 k1) cos(phi_i) + (q1 k0 - q0 k1) sin(phi_i)] / sqrt(d)``
    with ``phi_i = distance * base**(-2i/d)``.
    """
    dot, cross = _pair_terms(q, k)
    freqs = rope_frequencies(q.shape[-1], base)  # (d/2,)
    phi = torch.as_tensor(distances, dtype=torch.float64)[:, None] * freqs  # (L, d/2)
    return (dot @ torch.cos(phi).T + cross @ torch.sin(phi).T) / math.sqrt(q.shape[-1])  # (P, L)


def paired_scores(q: torch.Tensor, k: torch.Tensor, distances, base: float = 10000.0) -> torch.Tensor:
    """RoPE score of pair ``p`` at its own distance ``distances[p]``.

    q, k: (P, d); distances: (P,) values of ``pos_k - pos_q``. Returns (P,) float64.
    """
    dot, cross = _pair_terms(q, k)
    freqs = rope_frequencies(q.shape[-1], base)  # (d/2,)
    phi = torch.as_tensor(distances, dtype=torch.float64)[:, None] * freqs  # (P, d/2)
    return (dot * torch.cos(phi) + cross * torch.sin(phi)).sum(-1) / math.sqrt(q.shape[-1])


def correlated_pairs(
    n_pairs: int, d: int, cosine: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian (q, k) pairs whose expected cosine similarity is ``cosine``.

    ``k = c q + sqrt(1 - c^2) z`` with q, z ~ N(0, I). Returns q, k of shape
    (n_pairs, d), float64.
    """
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"cosine must lie in [-1, 1]; got cosine={cosine}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1; got n_pairs={n_pairs}")
    _check_dim(d)
    q = torch.randn(n_pairs, d, generator=generator, dtype=torch.float64)
    z = torch.randn(n_pairs, d, generator=generator, dtype=torch.float64)
    return q, cosine * q + math.sqrt(1.0 - cosine**2) * z


def interleaved_to_half_split(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim from interleaved pairs ``(2i, 2i+1)`` to half-split ``(i, i+d/2)``.

    x: (..., d) -> (..., d) with ``[x_0, x_2, ..., x_{d-2}, x_1, x_3, ..., x_{d-1}]``.
    """
    _check_dim(x.shape[-1])
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def hf_attention_score(
    q: torch.Tensor, k: torch.Tensor, pos_q: int, pos_k: int, base: float = 10000.0
) -> float:
    """The score through transformers' ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``.

    q, k: (head_dim,) in transformers' half-split layout (use
    :func:`interleaved_to_half_split` to compare with :func:`attention_score`).
    Geometry as TinyLlama's attention heads (head_dim 64 there). Computed in
    float64; returns ``(R q).(R k)/sqrt(head_dim)``.
    """
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    head_dim = q.shape[-1]
    _check_dim(head_dim)
    _check_base(base)
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    rotary = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, 2, head_dim, dtype=torch.float64)
    position_ids = torch.tensor([[pos_q, pos_k]])
    cos, sin = rotary(x, position_ids)  # (1, 2, head_dim) each
    q4 = q.to(torch.float64).reshape(1, 1, 1, head_dim).expand(1, 1, 2, head_dim)  # (B, H, T, hd)
    k4 = k.to(torch.float64).reshape(1, 1, 1, head_dim).expand(1, 1, 2, head_dim)
    q_rot, k_rot = apply_rotary_pos_emb(q4, k4, cos.to(torch.float64), sin.to(torch.float64))
    return float(q_rot[0, 0, 0] @ k_rot[0, 0, 1] / math.sqrt(head_dim))


def layout_pair_scores(
    order: torch.Tensor, pairs: torch.Tensor, q: torch.Tensor, k: torch.Tensor, base: float = 10000.0
) -> torch.Tensor:
    """RoPE scores of related (text, image) pairs in one prompt layout.

    order: (L,) gather indices of a layout (``reordered[j] = tokens[order[j]]``);
    the token at original index ``order[j]`` sits at position ``j``.
    pairs: (P, 2) original indices (query token, key token), e.g. (word, patch).
    q, k: (P, d) the pair vectors. Returns (P,) float64 scores at the
    positions the layout gives each pair.
    """
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2); got {tuple(pairs.shape)}")
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())  # original index -> new position
    distance = position[pairs[:, 1]] - position[pairs[:, 0]]  # (P,) pos_k - pos_q
    return paired_scores(q, k, distance, base)


def distance_curves(
    cosines, n_pairs: int, d: int, max_distance: int, base: float = 10000.0, seed: int = 0
) -> pd.DataFrame:
    """Score against relative distance for correlated pairs, summarised over pairs.

    For each cosine similarity in ``cosines``, draws ``n_pairs`` pairs
    (:func:`correlated_pairs`) and scores them at distances ``0..max_distance``
    (the key ``distance`` tokens before the query). Returns a long DataFrame
    with columns distance, cosine, mean, lo, hi (``lo``/``hi``: the 2.5% and
    97.5% quantiles over pairs: the band one pair falls in 95% of the time),
    and no_rope (the mean score without RoPE).
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0; got max_distance={max_distance}")
    generator = torch.Generator().manual_seed(seed)
    distances = torch.arange(max_distance + 1, dtype=torch.float64)
    frames = []
    for cosine in cosines:
        q, k = correlated_pairs(n_pairs, d, float(cosine), generator)
        scores = score_vs_distance(q, k, -distances, base)  # (P, L): key before query
        lo, hi = torch.quantile(scores, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
        frames.append(
            pd.DataFrame(
                {
                    "distance": distances.long().numpy(),
                    "cosine": float(cosine),
                    "mean": scores.mean(0).numpy(),
                    "lo": lo.numpy(),
                    "hi": hi.numpy(),
                    "no_rope": float((q * k).sum(-1).mean() / math.sqrt(d)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def grouped_prompt_order(assignment: torch.Tensor, n_text: int, placement: str) -> torch.Tensor:
    """Order of a whole prompt ``[BOS, image (M), text (N)]`` with BOS kept first.

    assignment: (M,) text index per image token or -1 (see
    :func:`gpslib.tokenmixer.grouped_order`). Returns (1 + M + N,) gather
    indices into ``[BOS, image, text]``.
    """
    inner = grouped_order(assignment, n_text, placement)  # (M + N,)
    return torch.cat([torch.zeros(1, dtype=torch.long), inner + 1])
