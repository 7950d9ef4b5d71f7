"""RoPE positions of a (reordered) prompt: a distance gap and position-only baselines (paper Section 1).

The paper's argument is about RoPE distance: an image token 600 positions before the word it
belongs to scores differently from one right beside it. The embedded model's prompts are
short (16 image tokens), so distance is made a setting instead: ``position_gap`` adds g
*virtual* positions after the leading block of image tokens, what g filler tokens would do
under RoPE without their compute. Position schemes from the literature change only the
positions of the image tokens (never the attention mask):

* ``"sequential"``: every token advances the position by one (plain LLaVA);
* ``"v2pe"``: V2PE (Ge et al., arXiv 2412.09616): image tokens advance it by ``delta < 1``,
  text by one; ``delta = 1/M`` puts a whole image of M tokens on one position;
* ``"cca"``: the positions of Concentric Causal Attention (Xing et al., NeurIPS 2024,
  ``xing0047/cca-llava``): the patches of the leading image block get the index of their
  concentric ring of the patch grid (outermost 0, centre R - 1, R = ceil(side / 2)), so the
  centre of the image is nearest the text, which follows at R. CCA also rebuilds the causal
  mask to follow the rings; that part is not reproduced here (positions only).

The leading block is the first run of consecutive image tokens of the sequence (in plain
LLaVA order: the whole image; after TokenMixer or the oracle: the image tokens left unmatched,
which Algorithm 1 puts first). If every image token was moved into the text, the first run is
the first group of moved tokens. Positions count from the first real token (0), so left
padding gets the positions transformers gives it; decoding continues from the last prompt
position + 1 (transformers' ``generate`` extends given ``position_ids`` that way).
"""

from __future__ import annotations

import math

import torch

__all__ = ["POSITION_SCHEMES", "concentric_rings", "leading_block", "position_ids"]

POSITION_SCHEMES = ("sequential", "v2pe", "cca")


def concentric_rings(side: int) -> torch.Tensor:
    """Ring index of each patch of a ``side`` x ``side`` grid, row-major: (side * side,) long.

    0 on the border, increasing inwards; the centre ring is ``ceil(side / 2) - 1``.
    """
    if not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be an int >= 1; got side={side!r}")
    r = torch.arange(side)
    dist = torch.minimum(r, side - 1 - r)  # (side,) distance to the nearest border
    return torch.minimum(dist[:, None], dist[None, :]).reshape(-1)


def leading_block(is_image: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the first run of consecutive real image tokens of each row."""
    real = attention_mask.bool()
    image = is_image & real
    started = image.long().cummax(dim=1).values.bool()  # at or after the first image token
    broken = (started & ~image).long().cumsum(dim=1) > 0  # after the first non-image token that follows
    return image & ~broken


def position_ids(is_image: torch.Tensor, patch: torch.Tensor, attention_mask: torch.Tensor, gap: int = 0,
                 scheme: str = "sequential", delta: float | None = None) -> torch.Tensor:
    """Positions (B, T) of a sequence whose image tokens are known.

    is_image (B, T) bool: which positions hold image tokens; patch (B, T) long: the patch index
    (row-major on the square grid) of each image token, -1 elsewhere (needed by ``"cca"``);
    attention_mask (B, T) (0 = padding). ``gap`` >= 0, ``scheme`` in :data:`POSITION_SCHEMES`,
    ``delta`` V2PE's step (None: 1/M). Returns long positions (float32 for ``"v2pe"``): 0 at
    each row's first real token, the same positions as transformers' for ``gap=0,
    scheme="sequential"`` (padding before the first real token at 0, after it counting on).
    """
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be an int >= 0; got gap={gap!r}")
    if scheme not in POSITION_SCHEMES:
        raise ValueError(f"scheme must be one of {POSITION_SCHEMES}; got scheme={scheme!r}")
    b, t = is_image.shape
    device = is_image.device
    real = attention_mask.bool()
    m = int(is_image[0].sum()) if b else 0
    steps = torch.arange(t, device=device)[None, :] > real.long().argmax(dim=1, keepdim=True)  # after the first real token
    inc = steps.to(torch.float64)
    if scheme == "v2pe":
        if delta is None:
            delta = 1.0 / max(m, 1)
        if not 0 < delta < 1 or not math.isfinite(delta):
            raise ValueError(f"delta must satisfy 0 < delta < 1; got delta={delta!r}")
        inc = torch.where(is_image & steps, torch.full_like(inc, delta), inc)
    block = leading_block(is_image, attention_mask)
    after = block.long().cumsum(dim=1).bool() & ~block  # at or after the end of the block ...
    first_after = after & (after.long().cumsum(dim=1) == 1)  # ... its first position
    if scheme == "cca":
        side = math.isqrt(m)
        if side * side != m:
            raise ValueError(f"position_scheme='cca' needs a square patch grid; got {m} image tokens")
        n_rings = (side + 1) // 2
        block_start = block & (block.long().cumsum(dim=1) == 1)
        inc = torch.where(block & ~block_start, torch.zeros_like(inc), inc)
        inc = inc + first_after.to(inc.dtype) * (n_rings - 1)
    inc = inc + first_after.to(inc.dtype) * gap
    pos = inc.cumsum(dim=1)
    if scheme == "cca":
        rings = concentric_rings(math.isqrt(m)).to(device)
        pos = pos + torch.where(block, rings[patch.clamp_min(0)], torch.zeros_like(patch)).to(pos.dtype)
    return pos.float() if scheme == "v2pe" else pos.long()
