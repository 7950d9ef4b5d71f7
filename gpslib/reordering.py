"""Token reordering inside the vision-language model (paper Figures 1-2).

:class:`ReorderingLlavaForConditionalGeneration` is transformers'
``LlavaForConditionalGeneration`` with one seam added: after the image
features are merged at the ``<image>`` placeholder (transformers' own
``get_image_features`` + ``get_placeholder_mask`` + ``masked_scatter``), the
prompt is reordered before the LLaMA backbone sees it. The backbone then runs
RoPE over the new sequence indices; nothing of transformers' ``forward`` is
copied.

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

import torch
from transformers import LlavaForConditionalGeneration

from gpslib.gps import GumbelPermutationSinkformer
from gpslib.sinkhorn import perm_matrix_to_order
from gpslib.tokenmixer import PLACEMENTS, _grouped_order, cosine_assignment

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
    [image; text] tokens (None for other strategies); segments: the
    :func:`prompt_segments` of the batch.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor | None
    order: torch.Tensor | None
    perm_matrix: torch.Tensor | None
    segments: dict[str, torch.Tensor]


def _packed_positions(select: torch.Tensor, width: int) -> torch.Tensor:
    """Positions of the True entries of each row, ascending, packed left: (B, T) bool -> (B, width)."""
    t = select.shape[1]
    arange = torch.arange(t, device=select.device)
    key = torch.where(select, arange, arange + t)  # selected first, in order
    return torch.argsort(key, dim=1)[:, :width]


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
    positions the reordered tokens fill, with slot_mask (B, M + N). Raises
    ValueError when a prompt has no image placeholder or the samples' image
    token counts differ.
    """
    b, t = input_ids.shape
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == image_token_id) & real
    n_image = is_image.sum(1)  # (B,)
    if int(n_image.min()) == 0:
        bad = int((n_image == 0).nonzero()[0, 0])
        raise ValueError(
            f"sample {bad} has no image placeholder (token id {image_token_id}); every prompt must "
            f"contain the expanded <image> tokens"
        )
    if int(n_image.max()) != int(n_image.min()):
        raise ValueError(f"samples have different image token counts {n_image.tolist()}; expected one image each")
    arange = torch.arange(t, device=input_ids.device)
    first_real = real.int().argmax(1)  # (B,)
    is_bos = torch.zeros_like(real)
    if bos_token_id is not None:
        rows = torch.arange(b, device=input_ids.device)
        is_bos[rows, first_real] = input_ids[rows, first_real] == bos_token_id
    if labels is not None:
        answer = labels != -100
        first_answer = torch.where(answer.any(1), answer.int().argmax(1), torch.full_like(first_real, t))
        before_answer = arange[None, :] < first_answer[:, None]
    else:
        before_answer = torch.ones_like(real)
    prompt = real & before_answer & ~is_bos
    is_text = prompt & ~is_image
    m = int(n_image[0])
    n_text = is_text.sum(1)  # (B,)
    n = int(n_text.max())
    text_mask = torch.arange(n, device=input_ids.device)[None, :] < n_text[:, None]  # (B, N)
    slot_mask = torch.arange(m + n, device=input_ids.device)[None, :] < (m + n_text)[:, None]  # (B, M+N)
    # one argsort packs image positions first (M per row), then text positions, in order
    key = torch.where(is_image, arange, torch.where(is_text, arange + t, arange + 2 * t))  # (B, T)
    packed = torch.argsort(key, dim=1)[:, : m + n]  # (B, M+N)
    return {
        "image_pos": packed[:, :m],
        "text_pos": packed[:, m:],
        "text_mask": text_mask,
        "slot_pos": _packed_positions(prompt, m + n),
        "slot_mask": slot_mask,
    }


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), index (B, K) -> (B, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _sequence_order(local_pos: torch.Tensor, local_order: torch.Tensor, slot: torch.Tensor, t: int) -> torch.Tensor:
    """Whole-sequence gather indices (B, T) from an order over the prompt's [image; text] tokens.

    local_pos (B, L): absolute position of each [image; text] token; local_order (B, L):
    gather indices into it; slot (B, L): the prompt positions to fill, ``t`` for padding.
    Every other position keeps its own token.
    """
    order = torch.arange(t + 1, device=local_pos.device).repeat(local_pos.shape[0], 1)  # (B, T+1), column T a sink
    order.scatter_(1, slot, local_pos.gather(1, local_order))
    return order[:, :t]


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
        config = self.config
        embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)
        features = self.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        features = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)  # (B*M, D)
        image_mask = self.model.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
        embeds = embeds.masked_scatter(image_mask, features)  # (B, T, D)
        seg = prompt_segments(
            input_ids, attention_mask, labels, config.image_token_id, config.text_config.bos_token_id
        )
        return {
            **seg,
            "inputs_embeds": embeds,
            "image_embeds": _gather_rows(embeds, seg["image_pos"]),  # (B, M, D)
            "text_embeds": _gather_rows(embeds, seg["text_pos"]),  # (B, N, D)
            "text_ids": input_ids.gather(1, seg["text_pos"]),  # (B, N)
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
        """
        config = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        parts = self.prompt_embeddings(input_ids, pixel_values, attention_mask, labels)
        seg = {k: parts[k] for k in ("image_pos", "text_pos", "text_mask", "slot_pos", "slot_mask")}
        embeds, x_img, x_txt = parts["inputs_embeds"], parts["image_embeds"], parts["text_embeds"]
        b, t, d = embeds.shape
        m, n = seg["image_pos"].shape[1], seg["text_pos"].shape[1]
        position_ids = None
        if bool((attention_mask[:, 0] == 0).any()):  # left padding: count positions from the first real token
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        local_pos = torch.cat([seg["image_pos"], seg["text_pos"]], dim=1)  # (B, M+N) absolute positions
        slot = torch.where(seg["slot_mask"], seg["slot_pos"], torch.full_like(seg["slot_pos"], t))  # (B, M+N)

        if config.reorder == "none":
            local_order = torch.arange(m + n, device=embeds.device).expand(b, -1)
        elif config.reorder == "cosine":
            assignment, _ = cosine_assignment(x_img, x_txt, config.reorder_threshold, seg["text_mask"])
            local_order = _grouped_order(assignment, n, config.reorder_placement)  # valid by construction
        elif config.reorder == "oracle":
            local_order = _grouped_order(self._check_assignment(reorder_assignment, seg), n, config.reorder_placement)
        else:
            return self._gps_reorder(embeds, attention_mask, labels, position_ids, x_img, x_txt, local_pos, slot, seg)

        order = _sequence_order(local_pos, local_order, slot, t)  # (B, T)
        return ReorderedInputs(
            inputs_embeds=_gather_rows(embeds, order),
            attention_mask=attention_mask.gather(1, order),
            labels=None if labels is None else labels.gather(1, order),
            position_ids=position_ids,
            order=order,
            perm_matrix=None,
            segments=seg,
        )

    def _check_assignment(self, assignment: torch.Tensor | None, seg: dict[str, torch.Tensor]) -> torch.Tensor:
        b, m = seg["image_pos"].shape
        if assignment is None:
            raise ValueError("reorder='oracle' needs reorder_assignment (B, M) with the batch; got None")
        assignment = torch.as_tensor(assignment, device=seg["image_pos"].device, dtype=torch.long)
        if tuple(assignment.shape) != (b, m):
            raise ValueError(f"reorder_assignment must have shape {(b, m)}; got {tuple(assignment.shape)}")
        n_text = seg["text_mask"].sum(1, keepdim=True)  # (B, 1)
        if bool(((assignment < -1) | (assignment >= n_text)).any()):
            raise ValueError(
                f"reorder_assignment values must lie in [-1, n_text - 1] per sample (n_text = "
                f"{n_text.squeeze(1).tolist()}); got range [{int(assignment.min())}, {int(assignment.max())}]"
            )
        return assignment

    def _gps_reorder(self, embeds, attention_mask, labels, position_ids, x_img, x_txt, local_pos, slot, seg):
        b, t, d = embeds.shape
        m = x_img.shape[1]
        x = torch.cat([x_img, x_txt], dim=1)  # (B, L, D), L = M + N
        mask = torch.cat([torch.ones_like(seg["text_mask"][:, :1]).expand(-1, m), seg["text_mask"]], dim=1)  # (B, L)
        gps_dtype = next(self.reorder_gps.parameters()).dtype
        if self.training:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.gps_tau, hard=self.gps_hard, noise=True, mask=mask)
        else:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.gps_tau, hard=True, noise=False, mask=mask)
        reordered = (P @ x.to(P.dtype)).to(embeds.dtype)  # (B, L, D)
        padded = torch.cat([embeds, embeds.new_zeros(b, 1, d)], dim=1)  # (B, T+1, D), row T is a sink
        new_embeds = padded.scatter(1, slot[..., None].expand(-1, -1, d), reordered)[:, :t]  # (B, T, D)
        order = None
        if bool(((P.detach() == 0) | (P.detach() == 1)).all()):  # hard: the whole-sequence order is defined
            order = _sequence_order(local_pos, perm_matrix_to_order(P.detach()), slot, t)
        # prompt tokens all have mask 1 and label -100, so mask and labels are unchanged by P
        return ReorderedInputs(new_embeds, attention_mask, labels, position_ids, order, P, seg)

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
