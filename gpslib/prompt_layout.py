"""Where a prompt's movable tokens are, and the sequence order that moves them.

A reordering is index bookkeeping on (B, T) integers: which positions hold the expanded
``<image>`` placeholders, which hold the prompt's text (after BOS, before the answer),
and which positions ("slots") the reordered [image; text] tokens fill. It runs once per
forward on the host, as compiled loops (:mod:`gpslib.host_kernels`); this module is their
Python face: shapes, checks and errors. Rules (:func:`prompt_layout`):

* image tokens: every real ``<image>`` token, in order (placeholder k holds the k-th
  projected image feature of its sample, as transformers' ``masked_scatter`` places them);
* text tokens: real tokens that are not image tokens, except the first real token when it
  is BOS and every token from the first real token with a label on (labels != -100 mark the
  answer; labels at padding positions are ignored);
* slots: the image and text positions together, in increasing order. Every other position
  (BOS, answer, padding) keeps its token.

:func:`cosine_sequence` is the TokenMixer reordering of a batch in one compiled call
(layout, the cosine assignment and Algorithm 1's sequence), the model's CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpslib.host_kernels import cosine_rows, layout_rows
from gpslib.tokenmixer import _check_placement, _check_threshold

__all__ = ["PromptLayout", "prompt_layout", "cosine_sequence", "check_feature_rows"]

_ABSENT = np.zeros((1, 1), dtype=np.int64)  # stands for a missing attention mask or labels


@dataclass(frozen=True)
class PromptLayout:
    """Host arrays of where the movable tokens of each prompt are.

    image_pos (B, M): positions of the image tokens, in order; text_pos (B, N): positions
    of the text tokens packed left (valid where :attr:`text_mask`, 0 elsewhere); n_text
    (B,): text tokens per sample; slot_pos (B, M + N): the positions the reordered tokens
    fill, in order, T where a sample has fewer (:attr:`slot_mask`).
    """

    image_pos: np.ndarray
    text_pos: np.ndarray
    n_text: np.ndarray
    slot_pos: np.ndarray

    @property
    def text_mask(self) -> np.ndarray:  # (B, N) bool
        return np.arange(self.text_pos.shape[1]) < self.n_text[:, None]

    @property
    def slot_mask(self) -> np.ndarray:  # (B, M + N) bool
        return np.arange(self.slot_pos.shape[1]) < (self.n_text + self.image_pos.shape[1])[:, None]

    def segments(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The layout as tensors on ``device`` (:func:`gpslib.reordering.prompt_segments`'s entries)."""
        arrays = {"image_pos": self.image_pos, "text_pos": self.text_pos, "text_mask": self.text_mask,
                  "slot_pos": self.slot_pos, "slot_mask": self.slot_mask}
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def _kernel_args(ids: np.ndarray, mask: np.ndarray | None, labels: np.ndarray | None,
                 image_token_id: int, bos_token_id: int | None) -> tuple:
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (B, T) with B >= 1; got shape {ids.shape}")
    for name, a in (("attention_mask", mask), ("labels", labels)):
        if a is not None and a.shape != ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {ids.shape}; got {a.shape}")
    return (ids, _ABSENT if mask is None else mask, mask is not None, _ABSENT if labels is None else labels,
            labels is not None, image_token_id, -1 if bos_token_id is None else bos_token_id, bos_token_id is not None)


def _layout(image_pos, text_pos, slots, counts, image_token_id: int) -> PromptLayout:
    """The :class:`PromptLayout` of the kernels' (B, T) arrays; raises on bad image counts."""
    n_image, n_text = counts[:, 0], counts[:, 1]
    m = int(n_image.min())
    if m == 0:
        raise ValueError(
            f"sample {int(np.argmin(n_image))} has no image placeholder (token id {image_token_id}); every "
            f"prompt must contain the expanded <image> tokens"
        )
    if int(n_image.max()) != m:
        raise ValueError(f"samples have different image token counts {n_image.tolist()}; expected one image each")
    n = int(n_text.max())
    return PromptLayout(image_pos[:, :m], text_pos[:, :n], n_text, slots[:, : m + n])


def prompt_layout(ids: np.ndarray, mask: np.ndarray | None, labels: np.ndarray | None,
                  image_token_id: int, bos_token_id: int | None) -> PromptLayout:
    """Where the movable tokens of each prompt are (rules in the module docstring).

    ids (B, T) int; mask (B, T) (nonzero = real) or None (all real); labels (B, T) or None
    (no answer). Raises ValueError when a prompt has no image placeholder or the samples'
    image token counts differ.
    """
    args = _kernel_args(ids, mask, labels, image_token_id, bos_token_id)
    return _layout(*layout_rows(*args), image_token_id)


def check_feature_rows(rows: int, n_image: int) -> None:
    """Raise ValueError unless the images gave one feature row per ``<image>`` token."""
    if rows != n_image:
        raise ValueError(
            f"image features and image tokens do not match: the images give {rows} feature rows, "
            f"the prompts hold {n_image} <image> tokens"
        )


def cosine_sequence(ids: np.ndarray, mask: np.ndarray | None, labels: np.ndarray | None, image_token_id: int,
                    bos_token_id: int | None, table: np.ndarray, threshold: float, placement: str
                    ) -> tuple[np.ndarray, np.ndarray, PromptLayout]:
    """TokenMixer's reordering of a batch, in one compiled pass on the host.

    ids, mask, labels as in :func:`prompt_layout`; table (B*T + R, D) float32/float64:
    the token embeddings (row ``i*T + p``), then the R image feature rows in placeholder
    order. Returns ``(order, source, layout)``: order (B, T) whole-sequence gather
    indices; source (B, T) the table row each new position reads (the merge of image
    features and the reordering in one gather); the :class:`PromptLayout`. Raises
    ValueError for bad image token counts or R != B * M.
    """
    _check_placement(placement)
    _check_threshold(threshold)
    if table.dtype not in (np.float32, np.float64):
        raise ValueError(f"table must be float32 or float64; got dtype {table.dtype}")
    args = _kernel_args(ids, mask, labels, image_token_id, bos_token_id)
    order, source, image_pos, text_pos, slots, counts, status, m, n = cosine_rows(
        *args, table, float(threshold), placement == "after")
    if status == 1:
        _layout(image_pos, text_pos, slots, counts, image_token_id)  # raises, naming the counts
    if status == 2:
        check_feature_rows(table.shape[0] - ids.size, ids.shape[0] * m)
    return order, source, PromptLayout(image_pos[:, :m], text_pos[:, :n], counts[:, 1], slots[:, : m + n])
