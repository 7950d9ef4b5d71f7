"""Token reordering inside the vision-language model (paper Figures 1-2, Algorithms 1-2).

:class:`ReorderingLlavaForConditionalGeneration` is transformers' ``LlavaForConditionalGeneration``
with one seam added: the prompt is reordered (and, if asked, given other RoPE positions)
before the LLaMA backbone sees it. The token embeddings and projected image features come
from transformers' own ``get_input_embeddings`` and ``get_image_features`` and are merged as
transformers merges them (``masked_scatter`` at the ``<image>`` placeholders); the prompt is
then read in the strategy's order with one gather. Nothing of transformers' ``forward`` is
copied; with ``reorder="none"`` and default positions the call goes to transformers' own path
unchanged.

What moves (:mod:`gpslib.prompt_layout`): BOS stays first; the image tokens and the prompt's
text tokens, up to and including the first ``ASSISTANT:`` found in ``input_ids``, are ordered
by the strategy; the answer, later turns and padding stay where they are. Labels and the
attention mask move with their tokens. Left and right padding both work.

Strategies and their settings live on the config (:class:`gpslib.reordering_config.
ReorderingLlavaConfig`): ``"none"``; ``"cosine"`` (TokenMixer, Algorithm 1, between the projected
image features and the text token embeddings); ``"gps"`` (the Gumbel Permutation Sinkformer
over the prompt's [image; text] tokens, Algorithm 2: ``P @ tokens``, soft or straight-through
hard in training, no noise and a Hungarian permutation at inference, so gradients reach the
projector and the Sinkformer); ``"oracle"`` (a per-sample assignment of image tokens to text
tokens given with the batch, ``reorder_assignment``, from ShapesVQA's grounding, placed as
Algorithm 1 places cosine matches: the upper bound for learned orders); ``"random"`` (as many
image tokens moved as ``"cosine"`` moves, each to a random word of the prompt, drawn from a
seed of the prompt's own tokens: the control that separates proximity from similarity).
Positions: :mod:`gpslib.positions`.

``generate`` follows transformers' conventions: it reorders the prompt once at prefill, runs
transformers' ``generate`` from the embeddings with the KV cache (decoding continues from the
last prompt position), and returns the caller's prompt ids followed by the new tokens, for
every strategy, as ``LlavaForConditionalGeneration`` does. The class is registered with
``AutoModelForImageTextToText`` for :class:`ReorderingLlavaConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, LlavaForConditionalGeneration
from transformers.conversion_mapping import (
    USER_REGISTERED_MAPPINGS,
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)

from gpslib.chat_format import assistant_separator_ids
from gpslib.gps import GumbelPermutationSinkformer
from gpslib.positions import position_ids as compute_position_ids
from gpslib.prompt_layout import PromptLayout, check_feature_rows, ignore_image_label_copies, prompt_layout, take_rows
from gpslib.reordering_config import ReorderingLlavaConfig, reordering_config
from gpslib.sinkhorn import perm_matrix_to_order
from gpslib.tokenmixer import cosine_assignment, grouped_order, random_assignment_like

__all__ = ["ReorderedInputs", "ReorderingLlavaForConditionalGeneration"]


@dataclass
class ReorderedInputs:
    """What the backbone receives after reordering.

    inputs_embeds (B, T, D); attention_mask (B, T); labels (B, T) or None (moved with their
    tokens); position_ids (B, T) (long, float32 for V2PE); order (B, T) gather indices of the
    whole sequence (None for a soft GPS permutation); perm_matrix (B, M+N, M+N) GPS's P over
    the prompt's [image; text] tokens (None for other strategies); layout: where the movable
    tokens are (:class:`gpslib.prompt_layout.PromptLayout`).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor
    order: torch.Tensor | None
    perm_matrix: torch.Tensor | None
    layout: PromptLayout


class ReorderingLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` that reorders the prompt before the backbone.

    The strategy and its settings are the config's (:class:`ReorderingLlavaConfig`; a plain
    ``LlavaConfig`` is converted with the default settings). ``forward`` and ``generate`` take
    one extra argument, ``reorder_assignment`` (B, M) long: for ``"oracle"``, the text index
    (within the prompt's text tokens, BOS excluded) each image token belongs to, or -1.
    ``from_pretrained(path, reorder="cosine", threshold=0.1)`` loads a plain LLaVA checkpoint
    with those settings (any config field as a keyword argument).
    """

    config_class = ReorderingLlavaConfig

    def __init__(self, config):
        if not isinstance(config, ReorderingLlavaConfig):
            config = reordering_config(config)
        super().__init__(config)
        settings = config.gps_settings
        if config.reorder == "gps":
            self.reorder_gps = GumbelPermutationSinkformer(config.text_config.hidden_size, settings)
        self.gps_tau = settings.tau_start  # the training temperature; the fine-tuning loop anneals it
        self.gps_hard = False  # straight-through hard permutation in training; the loop switches it on

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; fills ``assistant_separator_ids`` from the tokenizer saved
        beside the weights when the config has none (a plain LLaVA checkpoint)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.config.assistant_separator_ids is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path,
                                                          cache_dir=kwargs.get("cache_dir"))
                model.config.assistant_separator_ids = assistant_separator_ids(tokenizer)
            except (OSError, ValueError):
                pass  # no tokenizer there: reordering asks for the ids when it runs
        return model

    # ------------------------------------------------------------------ the seam
    def prompt_layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None) -> PromptLayout:
        """:func:`gpslib.prompt_layout.prompt_layout` with this model's token ids."""
        separator = self.config.assistant_separator_ids
        if separator is None:
            raise ValueError(
                "config.assistant_separator_ids is not set, so the end of the prompt cannot be found: set it with "
                "gpslib.chat_format.assistant_separator_ids(tokenizer), or load the model with gpslib.model.load_model")
        return prompt_layout(input_ids, attention_mask, self.config.image_token_id,
                             self.config.text_config.bos_token_id, separator, labels)

    def merged_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, layout: PromptLayout) -> torch.Tensor:
        """transformers' merge: token embeddings with the projected image features at the placeholders (B, T, D)."""
        tokens = self.get_input_embeddings()(input_ids)  # (B, T, D)
        features = self.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        features = torch.cat(list(features), dim=0).to(tokens.device, tokens.dtype)  # (B*M, D)
        check_feature_rows(features.shape[0], layout.image_pos.numel())
        image = (input_ids == self.config.image_token_id) & torch.zeros_like(input_ids, dtype=torch.bool).scatter(
            1, layout.image_pos, True)
        return tokens.masked_scatter(image[..., None].expand_as(tokens), features)

    def prompt_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                          attention_mask: torch.Tensor | None = None,
                          labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | PromptLayout]:
        """The merged embeddings and the prompt's pieces, for analysis.

        Returns ``layout`` (:class:`PromptLayout`), ``inputs_embeds`` (B, T, D),
        ``image_embeds`` (B, M, D) (the projected image features, what the LLM sees),
        ``text_embeds`` (B, N, D) and ``text_ids`` (B, N) of the prompt's text tokens (valid
        where ``layout.text_mask``).
        """
        layout = self.prompt_layout(input_ids, attention_mask, labels)
        embeds = self.merged_embeddings(input_ids, pixel_values, layout)
        return {
            "layout": layout,
            "inputs_embeds": embeds,
            "image_embeds": take_rows(embeds, layout.image_pos),
            "text_embeds": take_rows(embeds, layout.text_pos),
            "text_ids": input_ids.gather(1, layout.text_pos),
        }

    def reorder_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                       reorder_assignment: torch.Tensor | None = None) -> ReorderedInputs:
        """Merge the image features, order each prompt by the strategy, give it its positions.

        input_ids (B, T); pixel_values (B, C, H, W); attention_mask (B, T) (default all ones);
        labels (B, T) or None (an image token's own id as its label is ignored,
        :func:`gpslib.prompt_layout.ignore_image_label_copies`); reorder_assignment (B, M) for
        ``"oracle"``.
        """
        config = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None:
            labels = ignore_image_label_copies(input_ids, labels, config.image_token_id)
        parts = self.prompt_embeddings(input_ids, pixel_values, attention_mask, labels)
        layout, embeds = parts["layout"], parts["inputs_embeds"]
        image, text = parts["image_embeds"], parts["text_embeds"]
        (b, m), n = layout.image_pos.shape, layout.text_pos.shape[1]
        perm_matrix, mixed = None, None
        if config.reorder == "none":  # the original order (Algorithm 1 with nothing matched would put
            local_order = None  # the image right after BOS, before "USER:")
        elif config.reorder == "cosine":
            assignment, _ = cosine_assignment(image, text, config.threshold, layout.text_mask)
            local_order = grouped_order(assignment, n, config.placement)
        elif config.reorder == "oracle":
            local_order = grouped_order(self._check_assignment(reorder_assignment, layout), n, config.placement)
        elif config.reorder == "random":
            cosine, _ = cosine_assignment(image, text, config.threshold, layout.text_mask)
            text_ids = parts["text_ids"] * layout.text_mask  # (B, N), 0 on padding
            seeds = (text_ids * torch.arange(1, n + 1, device=text_ids.device)).sum(1) % (2**31 - 1)  # per prompt
            local_order = grouped_order(random_assignment_like(cosine, layout.n_text, seeds), n, config.placement)
        else:
            perm_matrix, mixed, local_order = self._gps_reorder(embeds, torch.cat([image, text], dim=1), layout)
        if config.reorder == "none":
            order = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        else:
            order = None if local_order is None else layout.sequence_order(local_order)  # (B, T)
        if mixed is not None:  # P @ tokens, so that gradients reach P
            embeds = mixed
        elif order is not None:
            embeds = take_rows(embeds, order)
        if order is not None and labels is not None:
            labels = labels.gather(1, order)
        return ReorderedInputs(embeds, attention_mask, labels, self._positions(input_ids, attention_mask, order, layout),
                               order, perm_matrix, layout)

    def _positions(self, input_ids, attention_mask, order, layout: PromptLayout) -> torch.Tensor:
        """Positions of the sequence read in ``order`` (identity when None), :func:`gpslib.positions.position_ids`."""
        b, t = input_ids.shape
        m = layout.image_pos.shape[1]
        is_image = torch.zeros_like(input_ids, dtype=torch.bool).scatter(1, layout.image_pos, True)
        patch = torch.full_like(input_ids, -1).scatter(1, layout.image_pos,
                                                      torch.arange(m, device=input_ids.device).expand(b, m))
        if order is not None:
            is_image, patch = is_image.gather(1, order), patch.gather(1, order)
        c = self.config
        return compute_position_ids(is_image, patch, attention_mask, c.position_gap, c.position_scheme, c.v2pe_delta)

    def _check_assignment(self, assignment: torch.Tensor | None, layout: PromptLayout) -> torch.Tensor:
        b, m = layout.image_pos.shape
        if assignment is None:
            raise ValueError("reorder='oracle' needs reorder_assignment (B, M) with the batch; got None")
        assignment = torch.as_tensor(assignment, device=layout.image_pos.device, dtype=torch.long)
        if tuple(assignment.shape) != (b, m):
            raise ValueError(f"reorder_assignment must have shape {(b, m)}; got {tuple(assignment.shape)}")
        if bool(((assignment < -1) | (assignment >= layout.n_text[:, None])).any()):
            raise ValueError(
                f"reorder_assignment values must lie in [-1, n_text - 1] per sample (n_text = "
                f"{layout.n_text.tolist()}); got range [{int(assignment.min())}, {int(assignment.max())}]"
            )
        return assignment

    def _gps_reorder(self, embeds: torch.Tensor, x: torch.Tensor, layout: PromptLayout):
        """P over the prompt's [image; text] tokens x (B, L, D), written into the slots.

        Returns (P (B, L, L), the embeddings mixed by P (B, T, D) or None, the local order (B, L)
        when P is a hard permutation, else None). At inference (hard P, no gradient) the
        embeddings are not mixed: the caller gathers them in the order, exactly.
        """
        if not hasattr(self, "reorder_gps"):
            raise ValueError("config.reorder is 'gps' but this model was built without a Sinkformer "
                             "(built with another strategy); build or load it with reorder='gps'")
        b, t, d = embeds.shape
        m = layout.image_pos.shape[1]
        mask = torch.cat([torch.ones_like(layout.text_mask[:, :1]).expand(-1, m), layout.text_mask], dim=1)  # (B, L)
        gps_dtype = next(self.reorder_gps.parameters()).dtype
        if self.training:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.gps_tau, hard=self.gps_hard, noise=True, mask=mask)
        else:
            P = self.reorder_gps(x.to(gps_dtype), tau=self.config.gps_settings.tau_end, hard=True, noise=False, mask=mask)
        hard = bool(((P.detach() == 0) | (P.detach() == 1)).all())
        local_order = perm_matrix_to_order(P.detach()) if hard else None
        if hard and not P.requires_grad:
            return P, None, local_order
        reordered = (P @ x.to(P.dtype)).to(embeds.dtype)  # (B, L, D)
        padded = torch.cat([embeds, embeds.new_zeros(b, 1, d)], dim=1)  # (B, T+1, D), row T is a sink
        mixed = padded.scatter(1, layout.slot_pos[..., None].expand(-1, -1, d), reordered)[:, :t]  # (B, T, D)
        return P, mixed, local_order

    # ------------------------------------------------------------------ forward / generate
    def _plain(self) -> bool:
        return self.config.reorder == "none" and self.config.default_positions

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                reorder_assignment: torch.Tensor | None = None, **kwargs):
        """As ``LlavaForConditionalGeneration.forward``; with pixel values, the prompt is reordered
        and positioned first (unless the strategy is ``"none"`` with default positions).
        Decoding steps (no pixel values) pass straight through. An image token's own id as its
        label (TRL's vision collator leaves it there) is ignored under every strategy
        (:func:`gpslib.prompt_layout.ignore_image_label_copies`), so losses compare across them."""
        if pixel_values is None or self._plain():
            if labels is not None and input_ids is not None:
                labels = ignore_image_label_copies(input_ids, labels, self.config.image_token_id)
            return super().forward(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                   labels=labels, **kwargs)
        if input_ids is None:
            raise ValueError("reordering needs input_ids (to find the image and text tokens); got inputs_embeds only")
        r = self.reorder_inputs(input_ids, pixel_values, attention_mask, labels, reorder_assignment)
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = r.position_ids
        return super().forward(inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask, labels=r.labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, reorder_assignment: torch.Tensor | None = None, **kwargs):
        """Reorder the prompt once at prefill, then transformers' ``generate`` with the KV cache.

        input_ids (B, T), left padded for batches. Returns what ``LlavaForConditionalGeneration.
        generate`` returns: the prompt ids followed by the new tokens (B', T + K) (B' = B x
        beams / returned sequences), or a generate output object whose ``sequences`` are those,
        with ``return_dict_in_generate=True``.
        """
        if input_ids is None:
            raise ValueError("generate needs input_ids; got None")
        if pixel_values is None or self._plain():
            return super().generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                    **kwargs)
        r = self.reorder_inputs(input_ids, pixel_values, attention_mask, None, reorder_assignment)
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = r.position_ids
        # the caller's ids beside the reordered embeddings: generate starts its sequences with them
        # (prompt + new tokens, as plain Llava returns) and its logits processors (repetition
        # penalty, n-gram bans) see the prompt, as they do in plain Llava; the first step reads the embeddings
        return super().generate(input_ids=input_ids, inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask,
                                **kwargs)


def _register() -> None:
    """Checkpoints read and written exactly as ``LlavaForConditionalGeneration``'s, and the Auto classes.

    transformers 5 renames Llava's weights between the saved (legacy) layout and the module
    layout with a mapping looked up by class name or model type, and skips that lookup for
    classes defined outside transformers unless they are registered.
    """
    for key in ("ReorderingLlavaForConditionalGeneration", ReorderingLlavaConfig.model_type):
        if key not in USER_REGISTERED_MAPPINGS:
            register_checkpoint_conversion_mapping(key, get_checkpoint_conversion_mapping("llava"))
    AutoModelForImageTextToText.register(ReorderingLlavaConfig, ReorderingLlavaForConditionalGeneration, exist_ok=True)
    try:
        from transformers import AutoModelForVision2Seq
    except ImportError:  # removed in transformers 5
        return
    AutoModelForVision2Seq.register(ReorderingLlavaConfig, ReorderingLlavaForConditionalGeneration, exist_ok=True)


_register()
