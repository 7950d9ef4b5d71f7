"""Token reordering inside the vision-language model (paper Figures 1-2).

:class:`ReorderingLlavaForConditionalGeneration` is transformers'
``LlavaForConditionalGeneration`` with one seam added: the prompt is reordered
before the LLaMA backbone sees it. The token embeddings and projected image
features come from transformers' own ``get_input_embeddings`` and
``get_image_features``; the features are placed at the ``<image>`` placeholders
(as transformers' ``masked_scatter`` does, in placeholder order) and the prompt
reordered in a single row gather, whose indices are bookkept on the host
(:mod:`gpslib.prompt_layout`, compiled loops; on the CPU the cosine strategy's
similarity runs in the same compiled call). The backbone then runs RoPE over the
new sequence indices; nothing of transformers' ``forward`` is copied, and
``"none"`` runs transformers' own path unchanged.

What moves: BOS stays first; the image tokens and the prompt's text tokens
(up to and including the assistant separator, i.e. every token before the
first label; every real token when there are no labels) are ordered by the
strategy; answer tokens and padding stay where they are. Labels and the
attention mask move with their tokens. Left and right padding both work.

Strategies (``config.reorder``):

* ``"none"``: plain LLaVA, bit-identical to ``LlavaForConditionalGeneration``;
* ``"cosine"``: TokenMixer, Algorithm 1 (:func:`gpslib.tokenmixer.cosine_reorder`)
  between the projected image features and the text token embeddings;
* ``"gps"``: the Gumbel Permutation Sinkformer over the prompt's [image; text]
  tokens (Algorithm 2): ``P @ tokens`` with P soft or straight-through hard in
  training, no Gumbel noise and a Hungarian hard permutation at inference, so
  gradients reach the projector and the Sinkformer;
* ``"oracle"``: a per-sample assignment of image tokens to text tokens given
  with the batch (``reorder_assignment``, from ShapesVQA's grounding), placed
  as Algorithm 1 places cosine matches: the upper bound for learned orders.

Generation reorders the prompt once at prefill, then runs transformers'
``generate`` from ``inputs_embeds`` with the KV cache, and returns only the
new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from gpslib.gps import GumbelPermutationSinkformer
from gpslib.prompt_layout import PromptLayout, check_feature_rows, cosine_sequence, prompt_layout
from gpslib.sinkhorn import perm_matrix_to_order
from gpslib.tokenmixer import PLACEMENTS, _grouped_order_host, cosine_assignment

__all__ = [
    "STRATEGIES",
    "GPS_DEFAULTS",
    "ReorderedInputs",
    "ReorderingLlavaForConditionalGeneration",
    "configure_reordering",
    "prompt_segments",
]

def _register_llava_checkpoint_layout() -> None:
    """Let the subclass read and write checkpoints exactly as ``LlavaForConditionalGeneration`` does.

    transformers 5 renames Llava's weights between the saved (legacy) layout and the
    module layout with a mapping looked up by class name or model type, and skips that
    lookup for classes defined outside transformers unless they are registered.
    """
    from transformers.conversion_mapping import (
        USER_REGISTERED_MAPPINGS,
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    name = "ReorderingLlavaForConditionalGeneration"
    if name not in USER_REGISTERED_MAPPINGS:
        register_checkpoint_conversion_mapping(name, get_checkpoint_conversion_mapping("llava"))


_register_llava_checkpoint_layout()

STRATEGIES = ("none", "cosine", "gps", "oracle")
_FUSED_CPU = True  # "cosine" on the CPU as one compiled pass; tests switch it off to compare the two paths
_HOST_DTYPES = (torch.float32, torch.float64)
GPS_DEFAULTS: dict[str, Any] = {
    "num_layers": 4,
    "ffn_dim": None,  # 4 * hidden size
    "sinkhorn_iters": 50,
    "alpha": 0.5,
    "noise_scale": 1.0,
    "tau": 1.0,  # training temperature; the fine-tuning loop anneals it
    "hard": False,  # straight-through hard permutation in training
}


def configure_reordering(
    config,
    reorder: str | None = None,
    threshold: float | None = None,
    placement: str | None = None,
    gps: dict[str, Any] | None = None,
):
    """Validate and fill the reordering settings on a ``LlavaConfig`` (in place; returns it).

    Settings kept by ``save_pretrained``: ``reorder`` (one of :data:`STRATEGIES`,
    "none" when absent), ``reorder_threshold`` (0.1), ``reorder_placement``
    ("before") and ``reorder_gps`` (:data:`GPS_DEFAULTS` updated by ``gps``).
    Raises ValueError listing the valid values of a bad one.
    """
    reorder = reorder if reorder is not None else getattr(config, "reorder", "none")
    if reorder not in STRATEGIES:
        raise ValueError(f"reorder must be one of {STRATEGIES}; got reorder={reorder!r}")
    threshold = threshold if threshold is not None else getattr(config, "reorder_threshold", 0.1)
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"reorder_threshold must lie in [-1, 1]; got reorder_threshold={threshold}")
    placement = placement if placement is not None else getattr(config, "reorder_placement", "before")
    if placement not in PLACEMENTS:
        raise ValueError(f"reorder_placement must be one of {PLACEMENTS}; got reorder_placement={placement!r}")
    merged = dict(GPS_DEFAULTS)
    merged.update(getattr(config, "reorder_gps", None) or {})
    merged.update(gps or {})
    unknown = sorted(set(merged) - set(GPS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown GPS settings {unknown}; valid ones are {sorted(GPS_DEFAULTS)}")
    if not merged["tau"] > 0:
        raise ValueError(f"GPS tau must be > 0; got tau={merged['tau']}")
    config.reorder = reorder
    config.reorder_threshold = float(threshold)
    config.reorder_placement = placement
    config.reorder_gps = merged
    return config


@dataclass
class ReorderedInputs:
    """What the backbone receives after reordering.

    inputs_embeds (B, T, D); attention_mask (B, T); labels (B, T) or None;
    position_ids (B, T) or None (None: transformers' default ``arange``);
    order (B, T) gather indices of the whole sequence (None for a soft GPS
    permutation); perm_matrix (B, L, L) GPS's P over the prompt's
    [image; text] tokens (None for other strategies); layout: where the
    movable tokens are (host arrays, :class:`gpslib.prompt_layout.PromptLayout`).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor | None
    order: torch.Tensor | None
    perm_matrix: torch.Tensor | None
    layout: PromptLayout

    @property
    def segments(self) -> dict[str, torch.Tensor]:
        """The :func:`prompt_segments` of the batch, on the device of the embeddings."""
        return self.layout.segments(self.inputs_embeds.device)


def prompt_segments(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_token_id: int,
    bos_token_id: int | None,
) -> dict[str, torch.Tensor]:
    """Where the movable tokens of each prompt are.

    input_ids (B, T); attention_mask (B, T) or None (all real); labels (B, T)
    or None. Returns image_pos (B, M); text_pos (B, N) packed left with
    text_mask (B, N) True for real entries; slot_pos (B, M + N) the prompt
    positions the reordered tokens fill, in order, with slot_mask (B, M + N)
    (``t`` where False); all on the device of ``input_ids``. Raises ValueError
    when a prompt has no image placeholder or the samples' image token counts
    differ.
    """
    return _layout_of(input_ids, attention_mask, labels, image_token_id, bos_token_id).segments(input_ids.device)


def _layout_of(input_ids, attention_mask, labels, image_token_id: int, bos_token_id: int | None) -> PromptLayout:
    """:func:`gpslib.prompt_layout.prompt_layout` of tensors."""
    return prompt_layout(_host(input_ids), None if attention_mask is None else _host(attention_mask),
                         None if labels is None else _host(labels), image_token_id, bos_token_id)


def _host(x: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array (no copy on CPU)."""
    return x.numpy(force=True)


def _device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device`` (shared memory on CPU)."""
    t = torch.from_numpy(x)
    return t if device.type == "cpu" else t.to(device)


def _prompt_rows(table: torch.Tensor, shape: tuple[int, int], text_pos: np.ndarray) -> torch.Tensor:
    """The prompt's [image; text] tokens (B, M + N, D) in one row gather.

    table (B*T + B*M, D) from ``_embed``; shape (B, T); text_pos (B, N) host positions.
    The image rows are the features in placeholder order, the text rows the token
    embeddings at ``text_pos``.
    """
    b, t = shape
    m = (table.shape[0] - b * t) // b
    rows = np.concatenate([b * t + np.arange(b * m).reshape(b, m), text_pos + t * np.arange(b)[:, None]], 1)
    return table.index_select(0, _device(rows.reshape(-1), table.device)).view(b, rows.shape[1], -1)


def _merge_rows(table: torch.Tensor, shape: tuple[int, int], image_pos: np.ndarray,
                order: np.ndarray | None = None) -> torch.Tensor:
    """The backbone's input embeddings (B, T, D) in one row gather.

    table (B*T + B*M, D) from ``_embed``: token embeddings, then image features;
    shape (B, T); image_pos (B, M) host positions of the <image> tokens; order (B, T)
    host gather indices (identity if None). Position ``image_pos[b, k]`` takes feature
    row ``b * M + k``, exactly what transformers' ``masked_scatter`` at the placeholder
    does (it fills the placeholders in order), and the sequence is read in ``order``
    in the same gather.
    """
    b, t = shape
    m = image_pos.shape[1]
    source = np.arange(b * t).reshape(b, t)  # row of each position in the table
    source[np.arange(b)[:, None], image_pos] = b * t + np.arange(b * m).reshape(b, m)
    if order is not None:
        source = np.take_along_axis(source, order, 1)
    index = _device(source.reshape(-1), table.device)
    return table.index_select(0, index).view(b, t, table.shape[-1])


def _sequence_order_host(local_pos: np.ndarray, local_order: np.ndarray, slot: np.ndarray, t: int) -> np.ndarray:
    """Whole-sequence gather indices (B, T) from an order over the prompt's [image; text] tokens.

    local_pos (B, L): absolute position of each [image; text] token; local_order (B, L):
    gather indices into it; slot (B, L): the prompt positions to fill, ``t`` for padding.
    Every other position keeps its own token. Host arrays (:class:`gpslib.prompt_layout.PromptLayout`).
    """
    b = local_pos.shape[0]
    rows = np.arange(b)[:, None]
    order = np.empty((b, t + 1), dtype=np.int64)  # column T is a sink for padding slots
    order[:] = np.arange(t + 1)
    order[rows, slot] = local_pos[rows, local_order]
    return order[:, :t].copy()


class ReorderingLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` that reorders the prompt before the backbone.

    The strategy and its settings live on the config (:func:`configure_reordering`).
    ``forward`` and ``generate`` take one extra argument, ``reorder_assignment``
    (B, M) long: for ``"oracle"``, the text index (within the prompt's text
    tokens, BOS excluded) each image token belongs to, or -1.
    """

    def __init__(self, config):
        configure_reordering(config)
        super().__init__(config)
        if config.reorder == "gps":
            g = config.reorder_gps
            self.reorder_gps = GumbelPermutationSinkformer(
                dim=config.text_config.hidden_size,
                num_layers=g["num_layers"],
                ffn_dim=g["ffn_dim"],
                sinkhorn_iters=g["sinkhorn_iters"],
                alpha=g["alpha"],
                noise_scale=g["noise_scale"],
            )
        self.gps_tau = float(config.reorder_gps["tau"])
        self.gps_hard = bool(config.reorder_gps["hard"])

    # ------------------------------------------------------------------ the seam
    def _embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """transformers' token embeddings and projected image features as one row table.

        Returns (B*T + R, D): rows ``b * T + p`` are the token embeddings of position p of
        sample b, rows ``B*T + k`` the R image feature rows in placeholder order (R is
        checked against the placeholders by the caller).
        """
        tokens = self.get_input_embeddings()(input_ids)  # (B, T, D)
        features = self.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        if any(f.dtype != tokens.dtype or f.device != tokens.device for f in features):
            features = [f.to(tokens.device, tokens.dtype) for f in features]
        return torch.cat([tokens.reshape(-1, tokens.shape[-1]), *features], dim=0)

    def _layout(self, input_ids, attention_mask, labels) -> PromptLayout:
        return _layout_of(input_ids, attention_mask, labels, self.config.image_token_id,
                          self.config.text_config.bos_token_id)

    def prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The backbone's input embeddings with the image features merged, and the prompt's pieces.

        input_ids (B, T); pixel_values (B, C, H, W); attention_mask (B, T);
        labels (B, T) or None. Returns the :func:`prompt_segments` entries plus
        ``inputs_embeds`` (B, T, D), ``image_embeds`` (B, M, D) (projected image
        features, what the LLM sees), ``text_embeds`` (B, N, D) and ``text_ids``
        (B, N) of the prompt's text tokens (valid where ``text_mask``).
        """
        layout = self._layout(input_ids, attention_mask, labels)
        (b, t), m = input_ids.shape, layout.image_pos.shape[1]
        table = self._embed(input_ids, pixel_values)
        check_feature_rows(table.shape[0] - b * t, b * m)
        x = _prompt_rows(table, (b, t), layout.text_pos)  # (B, M+N, D)
        return {
            **layout.segments(input_ids.device),
            "inputs_embeds": _merge_rows(table, (b, t), layout.image_pos),
            "image_embeds": x[:, :m],  # (B, M, D), the k-th placeholder's features
            "text_embeds": x[:, m:],  # (B, N, D)
            "text_ids": _device(np.take_along_axis(_host(input_ids), layout.text_pos, 1), input_ids.device),
        }

    def reorder_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        reorder_assignment: torch.Tensor | None = None,
    ) -> ReorderedInputs:
        """Merge image features at the placeholder, then reorder each prompt.

        input_ids (B, T); pixel_values (B, C, H, W); attention_mask (B, T);
        labels (B, T) or None; reorder_assignment (B, M) for ``"oracle"``.
        The order is index bookkeeping on the host (:mod:`gpslib.prompt_layout`); the image
        features are placed and the sequence reordered by one row gather on the device.
        ``"cosine"`` with float32/float64 embeddings on the CPU runs as one compiled pass
        (:func:`gpslib.prompt_layout.cosine_sequence`); elsewhere the similarity is
        :func:`gpslib.tokenmixer.cosine_assignment` on the device.
        """
        config = self.config
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        (b, t), mask_h = input_ids.shape, _host(attention_mask)
        position_ids = None
        if bool((mask_h[:, 0] == 0).any()):  # left padding: count positions from the first real token
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        ids_h, labels_h = _host(input_ids), None if labels is None else _host(labels)
        table = self._embed(input_ids, pixel_values)  # (B*T + B*M, D)
        # only prompt tokens move, and they all have mask 1 and label -100 (the prompt ends
        # at the first label), so the mask and the labels moved with them are unchanged
        if config.reorder == "cosine" and _FUSED_CPU and device.type == "cpu" and table.dtype in _HOST_DTYPES:
            order, source, layout = cosine_sequence(
                ids_h, mask_h, labels_h, config.image_token_id, config.text_config.bos_token_id, _host(table),
                config.reorder_threshold, config.reorder_placement)
            embeds = table.index_select(0, torch.from_numpy(source.reshape(-1))).view(b, t, table.shape[-1])
            return ReorderedInputs(embeds, attention_mask, labels, position_ids, torch.from_numpy(order), None, layout)

        layout = prompt_layout(ids_h, mask_h, labels_h, config.image_token_id, config.text_config.bos_token_id)
        m, n = layout.image_pos.shape[1], layout.text_pos.shape[1]
        check_feature_rows(table.shape[0] - b * t, b * m)
        x = _prompt_rows(table, (b, t), layout.text_pos)  # (B, M+N, D): image features, then text
        local_pos = np.concatenate([layout.image_pos, layout.text_pos], axis=1)  # (B, M+N) absolute positions
        if config.reorder == "none":
            local_order = np.broadcast_to(np.arange(m + n), (b, m + n))
        elif config.reorder == "cosine":
            text_mask = _device(layout.text_mask, device)
            assignment, _ = cosine_assignment(x[:, :m], x[:, m:], config.reorder_threshold, text_mask)
            local_order = _grouped_order_host(_host(assignment), n, config.reorder_placement)  # valid by construction
        elif config.reorder == "oracle":
            assignment = self._check_assignment(reorder_assignment, layout, device)
            local_order = _grouped_order_host(_host(assignment), n, config.reorder_placement)
        else:
            embeds = _merge_rows(table, (b, t), layout.image_pos)
            return self._gps_reorder(embeds, attention_mask, labels, position_ids, x, local_pos, layout)

        order = _sequence_order_host(local_pos, local_order, layout.slot_pos, t)  # (B, T)
        return ReorderedInputs(
            inputs_embeds=_merge_rows(table, (b, t), layout.image_pos, order),
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            order=_device(order, device),
            perm_matrix=None,
            layout=layout,
        )

    def _check_assignment(self, assignment: torch.Tensor | None, layout: PromptLayout, device) -> torch.Tensor:
        b, m = layout.image_pos.shape
        if assignment is None:
            raise ValueError("reorder='oracle' needs reorder_assignment (B, M) with the batch; got None")
        assignment = torch.as_tensor(assignment, device=device, dtype=torch.long)
        if tuple(assignment.shape) != (b, m):
            raise ValueError(f"reorder_assignment must have shape {(b, m)}; got {tuple(assignment.shape)}")
        n_text = _device(layout.n_text, device)[:, None]  # (B, 1)
        if bool(((assignment < -1) | (assignment >= n_text)).any()):
            raise ValueError(
                f"reorder_assignment values must lie in [-1, n_text - 1] per sample (n_text = "
                f"{layout.n_text.tolist()}); got range [{int(assignment.min())}, {int(assignment.max())}]"
            )
        return assignment

    def _gps_reorder(self, embeds, attention_mask, labels, position_ids, x, local_pos, layout: PromptLayout):
        b, t, d = embeds.shape  # x (B, L, D): the prompt's [image; text] tokens, L = M + N
        m = layout.image_pos.shape[1]
        seg = layout.segments(embeds.device)
        mask = torch.cat([torch.ones_like(seg["text_mask"][:, :1]).expand(-1, m), seg["text_mask"]], dim=1)  # (B, L)
        gps_dtype = next(self.reorder_gps.parameters()).dtype
        if self.training:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.gps_tau, hard=self.gps_hard, noise=True, mask=mask)
        else:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.gps_tau, hard=True, noise=False, mask=mask)
        reordered = (P @ x.to(P.dtype)).to(embeds.dtype)  # (B, L, D)
        slot = seg["slot_pos"]  # (B, L), t where there is no slot
        padded = torch.cat([embeds, embeds.new_zeros(b, 1, d)], dim=1)  # (B, T+1, D), row T is a sink
        new_embeds = padded.scatter(1, slot[..., None].expand(-1, -1, d), reordered)[:, :t]  # (B, T, D)
        order = None
        if bool(((P.detach() == 0) | (P.detach() == 1)).all()):  # hard: the whole-sequence order is defined
            local_order = _host(perm_matrix_to_order(P.detach()))
            order = _device(_sequence_order_host(local_pos, local_order, layout.slot_pos, t), embeds.device)
        # prompt tokens all have mask 1 and label -100, so mask and labels are unchanged by P
        return ReorderedInputs(new_embeds, attention_mask, labels, position_ids, order, P, layout)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        reorder_assignment: torch.Tensor | None = None,
        **kwargs,
    ):
        """As ``LlavaForConditionalGeneration.forward``; with pixel values and a
        strategy other than ``"none"``, the prompt is reordered first.
        Decoding steps (no pixel values) pass straight through."""
        if self.config.reorder == "none" or pixel_values is None:
            return super().forward(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, labels=labels, **kwargs
            )
        if input_ids is None:
            raise ValueError("reordering needs input_ids (to find the image and text tokens); got inputs_embeds only")
        r = self.reorder_inputs(input_ids, pixel_values, attention_mask, labels, reorder_assignment)
        if kwargs.get("position_ids") is None and r.position_ids is not None:
            kwargs["position_ids"] = r.position_ids
        return super().forward(inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask, labels=r.labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        reorder_assignment: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Reorder the prompt once at prefill, then transformers' ``generate`` with the KV cache.

        input_ids (B, T) left-padded for batches; returns only the new tokens (B, K).
        """
        if input_ids is None:
            raise ValueError("generate needs input_ids; got None")
        if self.config.reorder == "none" or pixel_values is None:
            out = super().generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs)
            return out[:, input_ids.shape[1]:]
        r = self.reorder_inputs(input_ids, pixel_values, attention_mask, None, reorder_assignment)
        return super().generate(inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask, **kwargs)
