"""Where a prompt's movable tokens are, and the whole-sequence order that moves them (paper Figure 1).

A reordering is index bookkeeping on (B, T) integers, batched torch code on the device of
the ids (CPU or CUDA alike). :func:`prompt_layout` finds, in each row of a batch:

* the **prompt**: from the first real token up to and including the first assistant
  separator (``ASSISTANT:``, :func:`gpslib.chat_format.assistant_separator_ids`) found in
  ``input_ids``. Everything after it (the answer, further turns, padding) stays in place.
  Labels are only a cross-check: labels on prompt text (as TRL's SFTTrainer collators write
  them) are allowed and move with their tokens. An image token may carry only
  ``IGNORE_INDEX`` or its own id (TRL's vision collator copies ``input_ids`` into the labels
  and masks only padding, leaving "their handling in loss computation" to the model: the
  reordering model ignores them, :func:`ignore_image_label_copies`); any other label on an image
  token raises ValueError;
* the **image tokens**: every real ``<image>`` token, in order (placeholder k holds the k-th
  projected image feature of its sample, as transformers' ``masked_scatter`` places them);
  they must lie in the prompt;
* the **text tokens**: the prompt's other tokens, except the first real token when it is BOS;
* the **slots**: the image and text positions together, in increasing order. A strategy
  orders the prompt's ``[image; text]`` tokens (an order over M + N, see
  :mod:`gpslib.tokenmixer`) and :meth:`PromptLayout.sequence_order` writes them into the slots.

Orders follow the convention of :mod:`gpslib.sinkhorn`: ``reordered[b, j] = x[b, order[b, j]]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from gpslib.chat_format import IGNORE_INDEX

__all__ = ["PromptLayout", "prompt_layout", "ignore_image_label_copies", "check_feature_rows", "take_rows"]


@dataclass(frozen=True)
class PromptLayout:
    """Where the movable tokens of each prompt of a batch are (long tensors on the ids' device).

    image_pos (B, M): positions of the image tokens, in order; text_pos (B, N): positions of
    the text tokens packed left (0 past ``n_text``, see :attr:`text_mask`); n_text (B,);
    slot_pos (B, M + N): the positions the reordered tokens fill, in increasing order, T
    past each row's M + n_text (see :attr:`slot_mask`); length: T.
    """

    image_pos: torch.Tensor
    text_pos: torch.Tensor
    n_text: torch.Tensor
    slot_pos: torch.Tensor
    length: int

    @property
    def text_mask(self) -> torch.Tensor:  # (B, N) bool
        return torch.arange(self.text_pos.shape[1], device=self.text_pos.device) < self.n_text[:, None]

    @property
    def slot_mask(self) -> torch.Tensor:  # (B, M + N) bool
        return self.slot_pos < self.length

    @property
    def local_pos(self) -> torch.Tensor:  # (B, M + N): the position of each [image; text] token
        return torch.cat([self.image_pos, self.text_pos], dim=1)

    def sequence_order(self, local_order: torch.Tensor) -> torch.Tensor:
        """Whole-sequence gather indices (B, T) from an order over the prompt's [image; text] tokens.

        local_order (B, M + N): gather indices into ``[image; text]``; entries past a row's
        M + n_text must point at its padded text entries (they land in no slot), which every
        strategy's order does (padded text tokens match nothing and sort last). Positions
        outside the slots keep their own token.
        """
        b, t = self.slot_pos.shape[0], self.length
        order = torch.arange(t + 1, device=self.slot_pos.device).repeat(b, 1)  # column T is a sink
        order.scatter_(1, self.slot_pos, self.local_pos.gather(1, local_order))
        return order[:, :t]


def _first_separator_end(ids: torch.Tensor, real: torch.Tensor, separator: torch.Tensor) -> torch.Tensor:
    """(B,) index just past the first real occurrence of ``separator`` in each row, -1 where none."""
    b, t = ids.shape
    k = separator.numel()
    if t < k:
        return torch.full((b,), -1, dtype=torch.long, device=ids.device)
    hit = (ids.unfold(1, k, 1) == separator).all(-1) & real.unfold(1, k, 1).all(-1)  # (B, T - k + 1)
    first = hit.long().argmax(dim=1)
    return torch.where(hit.any(dim=1), first + k, torch.full_like(first, -1))


def prompt_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int,
                  bos_token_id: int | None, separator_ids: Sequence[int],
                  labels: torch.Tensor | None = None) -> PromptLayout:
    """Where the movable tokens of each prompt are (the rules are in the module docstring).

    input_ids (B, T) long; attention_mask (B, T) (nonzero = real) or None (all real);
    labels (B, T) or None. Raises ValueError naming the sample when a prompt has no image
    token or no assistant separator, when an image token lies after the separator, when
    labels cover image tokens, or when the samples' image token counts differ.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (B, T) with B >= 1; got shape {tuple(input_ids.shape)}")
    for name, x in (("attention_mask", attention_mask), ("labels", labels)):
        if x is not None and x.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}; got {tuple(x.shape)}")
    if not separator_ids:
        raise ValueError("separator_ids is empty: the token ids of the assistant separator are needed to find "
                         "where a prompt ends (gpslib.chat_format.assistant_separator_ids)")
    b, t = input_ids.shape
    device = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0
    end = _first_separator_end(input_ids, real, torch.as_tensor(list(separator_ids), device=device))
    if bool((end < 0).any()):
        row = int((end < 0).nonzero()[0])
        raise ValueError(f"sample {row} has no assistant separator (token ids {list(separator_ids)}) among its real "
                         f"tokens; the reorderable prompt ends with it")
    pos = torch.arange(t, device=device).expand(b, t)
    image = real & (input_ids == image_token_id)
    n_image = image.sum(dim=1)
    m = int(n_image.min())
    if m == 0:
        raise ValueError(f"sample {int(n_image.argmin())} has no image token (id {image_token_id}); every prompt "
                         f"must contain the expanded <image> tokens")
    if int(n_image.max()) != m:
        raise ValueError(f"samples have different image token counts {n_image.tolist()}; expected one image each")
    late = image & (pos >= end[:, None])
    if bool(late.any()):
        raise ValueError(f"sample {int(late.any(1).nonzero()[0])} has image tokens after its assistant separator; "
                         f"the image must be in the first prompt")
    if labels is not None:
        targets = image & (labels != IGNORE_INDEX) & (labels != image_token_id)
        if bool(targets.any()):
            row = int(targets.any(1).nonzero()[0])
            raise ValueError(f"labels of sample {row} cover image tokens with targets "
                             f"{sorted(set(labels[row][targets[row]].tolist()))[:5]}; an image token's label must be "
                             f"{IGNORE_INDEX} or its own id {image_token_id} (as TRL's vision collator leaves it)")
    first = real.long().argmax(dim=1, keepdim=True)  # (B, 1) first real token
    bos = (pos == first) & (input_ids == bos_token_id) if bos_token_id is not None else torch.zeros_like(real)
    text = real & (pos < end[:, None]) & ~image & ~bos
    n_text = text.sum(dim=1)
    n = int(n_text.max())
    # pack positions left: real ones sort by position, the rest after T
    beyond = pos + t
    image_pos = torch.where(image, pos, beyond).sort(dim=1).values[:, :m]
    text_pos = torch.where(text, pos, beyond).sort(dim=1).values[:, :n]
    slot_pos = torch.where(image | text, pos, beyond).sort(dim=1).values[:, : m + n]
    return PromptLayout(image_pos=image_pos, text_pos=torch.where(text_pos < t, text_pos, 0), n_text=n_text,
                        slot_pos=slot_pos.clamp_max(t), length=t)


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row ``index[b, k]`` of sample ``b`` of ``x`` at ``[b, k]``: x (B, T, D), index (B, K) long -> (B, K, D).

    The convention above, ``out[b, k] = x[b, index[b, k]]``, as one ``index_select`` of whole
    rows of the flattened batch: the same values and gradients as ``x.gather(1, index[..., None]
    .expand(-1, -1, D))``, and on a CPU about 1.5x faster at the paper's geometry (gather reads
    an index per element, this one per row; ``benchmarks/bench_tokenmixer.py`` times it).
    """
    if x.dim() != 3 or index.dim() != 2 or index.shape[0] != x.shape[0]:
        raise ValueError(f"take_rows needs x (B, T, D) and index (B, K) with the same B; got "
                         f"{tuple(x.shape)} and {tuple(index.shape)}")
    b, t, d = x.shape
    rows = index + torch.arange(b, device=index.device)[:, None] * t  # (B, K) rows of x.reshape(B*T, D)
    return x.reshape(b * t, d).index_select(0, rows.reshape(-1)).view(b, index.shape[1], d)


def ignore_image_label_copies(input_ids: torch.Tensor, labels: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """``labels`` (B, T) with ``IGNORE_INDEX`` where an image token carries its own id (a new tensor).

    TRL's vision collator copies ``input_ids`` into the labels and masks only padding, leaving
    the image tokens' "handling in loss computation" to the model. No token should be trained
    to predict an ``<image>`` placeholder (and once a prompt is reordered they sit among the
    words), so the reordering model ignores these copies under every strategy. Other labels on
    image tokens are left for :func:`prompt_layout` to reject.
    """
    return labels.masked_fill((input_ids == image_token_id) & (labels == image_token_id), IGNORE_INDEX)


def check_feature_rows(rows: int, n_image: int) -> None:
    """Raise ValueError unless the images gave one feature row per ``<image>`` token."""
    if rows != n_image:
        raise ValueError(
            f"image features and image tokens do not match: the images give {rows} feature rows, "
            f"the prompts hold {n_image} <image> tokens"
        )
