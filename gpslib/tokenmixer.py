"""TokenMixer (paper Section 3.1, Algorithm 1): group image tokens with text tokens.

:func:`grouped_order` builds Algorithm 1's sequence from an assignment of
image tokens to text tokens: unmatched image tokens first, in their original
order; then, for each text token in order, its matched image tokens in their
original order followed by the text token (``placement="before"``, as the
paper's prose and the authors' code do) or preceded by it (``"after"``, as
Algorithm 1's listing writes it).

Orders are gather indices into ``cat([image_tokens, text_tokens])``:
``reordered[..., j] = tokens[..., order[..., j]]`` (DESIGN.md).
"""

from __future__ import annotations

import torch

__all__ = ["PLACEMENTS", "grouped_order"]

PLACEMENTS = ("before", "after")


def grouped_order(assignment: torch.Tensor, n_text: int, placement: str = "before") -> torch.Tensor:
    """Algorithm 1's sequence as gather indices, batched and loop-free.

    assignment: (..., M) long; ``assignment[..., m]`` is the text index in
    ``[0, n_text)`` image token ``m`` is grouped with, or -1 for unmatched.
    Returns order: (..., M + n_text) long, gather indices into
    ``cat([image (M), text (n_text)])``.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got placement={placement!r}")
    if n_text < 0:
        raise ValueError(f"n_text must be >= 0; got n_text={n_text}")
    assignment = torch.as_tensor(assignment, dtype=torch.long)
    if assignment.numel() and (assignment.min() < -1 or assignment.max() >= n_text):
        raise ValueError(
            f"assignment values must lie in [-1, {n_text - 1}]; got range "
            f"[{int(assignment.min())}, {int(assignment.max())}]"
        )
    m = assignment.shape[-1]
    lead = assignment.shape[:-1]
    stride = 2 * m + 2  # room for M image slots on either side of each text token
    image_pos = torch.arange(m, device=assignment.device).expand(*lead, m)  # (..., M)
    offset = image_pos if placement == "before" else image_pos + m + 1
    image_key = torch.where(assignment >= 0, (assignment + 1) * stride + offset, image_pos)  # (..., M)
    text_key = (torch.arange(n_text, device=assignment.device) + 1) * stride + m  # (N,)
    keys = torch.cat([image_key, text_key.expand(*lead, n_text)], dim=-1)  # (..., M + N)
    return torch.argsort(keys, dim=-1, stable=True)
