"""TokenMixer (paper Section 3.1, Algorithm 1): group image tokens with text tokens.

:func:`cosine_assignment` is Algorithm 1's rule, lines 3-11: each image token's most
similar text token (cosine similarity), kept when the similarity reaches ``threshold``
(the paper's tau_align). :func:`grouped_order` builds Algorithm 1's sequence from an
assignment: unmatched image tokens first, in their original order; then, for each text
token in order, its matched image tokens in their original order followed by the text token
(``placement="before"``, as the paper's prose and the authors' code do) or preceded by it
(``"after"``, as Algorithm 1's listing writes it). Both are batched torch code, the same on
CPU and CUDA. The threshold and the placement have their defaults in one place, the model
config (:class:`gpslib.reordering_config.ReorderingLlavaConfig`); here they are required.

Orders are gather indices into ``cat([image_tokens, text_tokens])``:
``reordered[..., j] = tokens[..., order[..., j]]`` (the convention of :mod:`gpslib.sinkhorn`).
The authors'-style loop these functions are checked against is
:func:`gpslib.comparison_only.cosine_reorder_per_token`.
"""

from __future__ import annotations

import torch

from gpslib.intervals import bootstrap_ci

__all__ = [
    "PLACEMENTS",
    "check_threshold",
    "check_placement",
    "grouped_order",
    "cosine_similarity_matrix",
    "cosine_assignment",
    "cosine_reorder",
    "similarity_stats",
    "random_assignment_like",
    "grounding_scores",
    "threshold_sweep",
]

PLACEMENTS = ("before", "after")


def check_placement(placement: str) -> str:
    """``placement`` if it is one of :data:`PLACEMENTS`, else ValueError naming it."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got placement={placement!r}")
    return placement


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float if it is a cosine similarity in [-1, 1], else ValueError naming it."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [-1, 1] (a cosine similarity); got threshold={threshold!r}")
    return float(threshold)


def grouped_order(assignment: torch.Tensor, n_text: int, placement: str) -> torch.Tensor:
    """Algorithm 1's sequence as gather indices, batched and loop-free.

    assignment: (..., M) long; ``assignment[..., m]`` is the text index in
    ``[0, n_text)`` image token ``m`` is grouped with, or -1 for unmatched.
    Returns order: (..., M + n_text) long, gather indices into
    ``cat([image (M), text (n_text)])``, on the device of ``assignment``.

    Every token gets a sort key (group, side, index): group 0 holds the unmatched image
    tokens, group j + 1 text token j and its image tokens; within a group the image tokens
    come before the text token (``"before"``) or after it (``"after"``), in their original
    order. The keys are distinct, so one argsort gives the sequence.
    """
    check_placement(placement)
    if not isinstance(n_text, int) or n_text < 0:
        raise ValueError(f"n_text must be an int >= 0; got n_text={n_text!r}")
    assignment = torch.as_tensor(assignment)
    if assignment.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"assignment must be an integer tensor; got dtype {assignment.dtype}")
    if assignment.numel() and (int(assignment.min()) < -1 or int(assignment.max()) >= n_text):
        raise ValueError(
            f"assignment values must lie in [-1, {n_text - 1}]; got range "
            f"[{int(assignment.min())}, {int(assignment.max())}]"
        )
    assignment = assignment.long()
    m, device = assignment.shape[-1], assignment.device
    stride = m + 1  # room for the index within a (group, side)
    image_side = 0 if placement == "before" else 1
    matched = assignment >= 0
    image_key = (assignment + 1) * (2 * stride) + matched * (image_side * stride) + torch.arange(m, device=device)
    text_key = (torch.arange(n_text, device=device) + 1) * (2 * stride) + (1 - image_side) * stride  # (N,)
    keys = torch.cat([image_key, text_key.expand(*assignment.shape[:-1], n_text)], dim=-1)  # (..., M + N)
    return keys.argsort(dim=-1)


def cosine_similarity_matrix(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Cosine similarity of every image token with every text token.

    image_embeds: (..., M, D); text_embeds: (..., N, D). Returns (..., M, N),
    computed in float32 at least.
    """
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"image and text embeddings must share their last dimension D; got "
            f"D={image_embeds.shape[-1]} (image) and D={text_embeds.shape[-1]} (text)"
        )
    dtype = torch.promote_types(image_embeds.dtype, torch.float32)
    img = image_embeds if image_embeds.dtype == dtype else image_embeds.to(dtype)  # (..., M, D)
    txt = text_embeds if text_embeds.dtype == dtype else text_embeds.to(dtype)  # (..., N, D)
    txt = txt / torch.linalg.vector_norm(txt, dim=-1, keepdim=True).clamp_min(eps)  # F.normalize, fewer calls
    # divide the (M, N) product by the image norms instead of writing a normalised (M, D) copy
    return (img @ txt.transpose(-1, -2)) / torch.linalg.vector_norm(img, dim=-1, keepdim=True).clamp_min(eps)


def cosine_assignment(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    threshold: float,
    text_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1, lines 3-11: each image token's best text token, if it reaches ``threshold``.

    image_embeds: (..., M, D); text_embeds: (..., N, D); text_mask: (..., N) bool,
    True for real text tokens (padding never matches). Returns
    ``(assignment, best)``: (..., M) long text index or -1 for unmatched, and
    (..., M) the best similarity (-inf where there is no real text token). Ties
    go to the lowest text index.
    """
    check_threshold(threshold)
    sim = cosine_similarity_matrix(image_embeds, text_embeds)  # (..., M, N)
    if text_mask is not None:
        if text_mask.shape != text_embeds.shape[:-1]:
            raise ValueError(
                f"text_mask must have shape {tuple(text_embeds.shape[:-1])}; got {tuple(text_mask.shape)}"
            )
        real = text_mask if text_mask.dtype == torch.bool else text_mask.bool()
        sim.masked_fill_(~real[..., None, :], float("-inf"))  # sim is a fresh tensor
    if sim.shape[-1] == 0:
        best = sim.new_full(sim.shape[:-1], float("-inf"))
        return torch.full(sim.shape[:-1], -1, dtype=torch.long, device=sim.device), best
    best, index = sim.max(dim=-1)  # (..., M); max returns the first maximal index
    return index.masked_fill_(best < threshold, -1), best


def cosine_reorder(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    threshold: float,
    placement: str,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """TokenMixer (Algorithm 1): gather indices into ``cat([image_embeds, text_embeds])``.

    image_embeds: (M, D) or (B, M, D); text_embeds: (N, D) or (B, N, D);
    text_mask: optional (B, N) / (N,) bool, True for real text tokens. Returns
    order: (M + N,) or (B, M + N) long. An image token is matched when its best
    cosine similarity over the real text tokens is >= ``threshold``; see
    :func:`grouped_order` for the sequence built from the matches. Padded text
    tokens keep their relative order among the text tokens and match nothing.
    Vectorised: no Python loop over tokens or samples.
    """
    if image_embeds.ndim != text_embeds.ndim or image_embeds.ndim not in (2, 3):
        raise ValueError(
            f"image_embeds and text_embeds must both be (M, D) or both (B, M, D); got shapes "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if image_embeds.ndim == 3 and image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"batch sizes differ: image_embeds has B={image_embeds.shape[0]}, text_embeds B={text_embeds.shape[0]}"
        )
    assignment, _ = cosine_assignment(image_embeds, text_embeds, threshold, text_mask)
    return grouped_order(assignment, text_embeds.shape[-2], placement)


def similarity_stats(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    threshold: float,
    text_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | float]:
    """Statistics for the notebook: each image token's best similarity and the fraction moved.

    Returns ``{"best": (..., M) best similarity per image token, "fraction_moved":
    float, the fraction of image tokens whose best similarity reaches threshold}``.
    """
    assignment, best = cosine_assignment(image_embeds, text_embeds, threshold, text_mask)
    return {"best": best, "fraction_moved": float((assignment >= 0).float().mean()) if assignment.numel() else 0.0}


def random_assignment_like(assignment: torch.Tensor, n_text: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """A control for TokenMixer: as many image tokens moved as ``assignment`` moves, at random.

    assignment (B, M) long (-1 = unmatched); n_text (B,) the real text tokens of each row;
    seeds (B,) long, one generator seed per row (so a row gets the same draw alone or in any
    batch). Row b moves ``k_b = (assignment[b] >= 0).sum()`` image tokens chosen uniformly
    at random, each to a text token drawn uniformly from ``[0, n_text[b])``. Returns (B, M)
    long, -1 for unmoved tokens. Separates proximity (tokens near *some* word) from
    similarity (tokens near *their* word).
    """
    if assignment.dim() != 2 or n_text.shape != assignment.shape[:1] or seeds.shape != assignment.shape[:1]:
        raise ValueError(f"assignment must be (B, M) with n_text and seeds (B,); got {tuple(assignment.shape)}, "
                         f"{tuple(n_text.shape)}, {tuple(seeds.shape)}")
    out = torch.full_like(assignment, -1)
    m = assignment.shape[1]
    for b in range(assignment.shape[0]):
        k, n = int((assignment[b] >= 0).sum()), int(n_text[b])
        if k == 0 or n == 0:
            continue
        g = torch.Generator().manual_seed(int(seeds[b]))
        moved = torch.randperm(m, generator=g)[:k]
        out[b, moved.to(out.device)] = torch.randint(0, n, (k,), generator=g).to(out.device)
    return out


def grounding_scores(
    assignment: torch.Tensor, image_object: torch.Tensor, text_object: torch.Tensor
) -> dict[str, float]:
    """How well an assignment of image tokens to text tokens matches ground truth.

    assignment (..., M): text index per image token or -1; image_object (..., M):
    the object each patch shows or -1; text_object (..., N): the object each text
    token names or -1. A moved image token is correct when its text token names
    the object the patch shows. Returns ``precision`` (correct / moved),
    ``recall`` (correct / patches of named objects), ``moved`` (fraction of image
    tokens moved) and the counts behind them; precision is NaN when nothing moved.
    """
    target = text_object.gather(-1, assignment.clamp_min(0))  # (..., M) object named by the chosen token
    correct = (assignment >= 0) & (target >= 0) & (target == image_object)
    # patches whose object some text token names
    nameable = (image_object[..., :, None] == text_object[..., None, :]).any(-1) & (image_object >= 0)
    moved = int((assignment >= 0).sum())
    n_correct, n_nameable = int(correct.sum()), int(nameable.sum())
    return {
        "precision": n_correct / moved if moved else float("nan"),
        "recall": n_correct / n_nameable if n_nameable else float("nan"),
        "moved": moved / assignment.numel() if assignment.numel() else 0.0,
        "n_moved": moved,
        "n_correct": n_correct,
        "n_nameable": n_nameable,
    }


def threshold_sweep(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                    image_object: torch.Tensor, text_object: torch.Tensor, thresholds, seed: int = 0):
    """TokenMixer against the grounding, per threshold: how many image tokens move and how many rightly.

    image_embeds (B, M, D), text_embeds (B, N, D), text_mask (B, N); image_object (B, M) and
    text_object (B, N) as :func:`grounding_scores` takes them. Returns a DataFrame indexed by
    threshold with the fraction moved, precision and recall, and ``random precision``: the
    precision of as many tokens moved to random words (:func:`random_assignment_like`, seeds
    ``seed + row``), the floor a similarity with no grounding in it reaches. ``moved ci_low`` /
    ``moved ci_high``: the 95% percentile-bootstrap interval of the fraction moved over the
    prompts (rows resampled, :func:`gpslib.intervals.bootstrap_ci` with ``seed``): the tokens of
    one prompt move together, so the prompts, not the tokens, are the independent draws.
    """
    import pandas as pd

    n_text = text_mask.sum(1)
    seeds = seed + torch.arange(text_mask.shape[0])
    records = []
    for th in thresholds:
        assignment, _ = cosine_assignment(image_embeds, text_embeds, th, text_mask)
        scores = grounding_scores(assignment, image_object, text_object)
        random = grounding_scores(random_assignment_like(assignment, n_text, seeds), image_object, text_object)
        _, low, high = bootstrap_ci((assignment >= 0).double().mean(-1).tolist(), seed=seed)  # per prompt
        records.append({"threshold": float(th), "moved": scores["moved"], "moved ci_low": low, "moved ci_high": high,
                        "precision": scores["precision"], "recall": scores["recall"],
                        "random precision": random["precision"]})
    return pd.DataFrame(records).set_index("threshold")
