"""The vision-language model: tiny TinyLLaVA configs, factories and one loader.

Every model here is transformers' ``LlavaForConditionalGeneration`` with the
real model's architecture (``bczhou/tiny-llava-v1-hf``): a CLIP vision tower
read at ``vision_feature_layer=-2`` with the ``"default"`` strategy (CLS
dropped), a 2-layer gelu projector, and a LLaMA decoder with grouped-query
attention. Three sizes (:data:`MODEL_SIZES`):

* ``"embedded"``: pretrained here on ShapesVQA (64 px, patch 16 -> 16 image tokens);
* ``"test"``: random weights, seconds per forward, for unit tests (16 image tokens);
* ``"mirror"``: the real model's token ids and geometry (vocab 32064,
  ``<image>`` 32000, ``<pad>`` 32001, 336 px, patch 14 -> 576 image tokens)
  with tiny hidden sizes and random weights: the stand-in for the hub path.

:func:`load_model` is the one entry point for a trained model: a hub id or a
local directory (the embedded base model's directory comes from
:func:`gpslib.pretrain.base_model_dir`), plain or as a
:class:`gpslib.reordering.ReorderingLlavaForConditionalGeneration` with its settings.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from gpslib.chat_format import assistant_separator_ids
from gpslib.processor import build_image_processor, make_llava_processor, num_image_tokens, train_tokenizer
from gpslib.reordering import ReorderingLlavaForConditionalGeneration
from gpslib.reordering_config import ReorderingLlavaConfig, reordering_config

__all__ = [
    "MODEL_SIZES",
    "check_text_layers",
    "tiny_llava_config",
    "build_processor",
    "build_model",
    "load_model",
    "fix_processor",
]

# size -> geometry and widths. base_vocab: tokenizer pieces before <image>, <pad>;
# the model's vocabulary is padded to a multiple of 64 as the real one (32002 -> 32064).
MODEL_SIZES: dict[str, dict[str, Any]] = {
    # embedded: sized so gpslib.pretrain trains it in minutes on 2 cores (64 px, patch 16: one
    # patch per cell of ShapesVQA's 4 x 4 grid, 16 image tokens); PretrainConfig.text_layers
    # deepens its language model for a trial (benchmarks/base_model_trials.py).
    "embedded": dict(image_size=64, patch_size=16, base_vocab=768,
                     vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
                     text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=2048)),
    "test": dict(image_size=32, patch_size=8, base_vocab=768,
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=2048)),
    "mirror": dict(image_size=336, patch_size=14, base_vocab=32000,
                   vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                   text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                             num_key_value_heads=1, max_position_embeddings=2048)),
}


def _spec(size: str) -> dict[str, Any]:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes are {list(MODEL_SIZES)}")
    return MODEL_SIZES[size]


def check_text_layers(text_layers: Any) -> int | None:
    """``text_layers`` if it is None (the size's depth) or an int >= 1, else ValueError naming it."""
    if text_layers is not None and (not isinstance(text_layers, int) or isinstance(text_layers, bool) or text_layers < 1):
        raise ValueError(f"text_layers must be None or an int >= 1; got text_layers={text_layers!r}")
    return text_layers


def tiny_llava_config(size: str = "embedded", text_layers: int | None = None):
    """A ``LlavaConfig`` of the real architecture at ``size`` (one of :data:`MODEL_SIZES`).

    ``text_layers``: the language model's number of layers (None: the size's). ValueError
    unless None or an int >= 1.

    ``image_token_index`` is the tokenizer's ``<image>`` id (``base_vocab``),
    ``pad_token_id`` the next, bos 1, eos 2, ``image_seq_length`` the number
    of image tokens, ``(image_size // patch_size) ** 2``.
    """
    s = _spec(size)
    check_text_layers(text_layers)
    text_spec = s["text"] if text_layers is None else {**s["text"], "num_hidden_layers": text_layers}
    base = s["base_vocab"]
    vision = CLIPVisionConfig(image_size=s["image_size"], patch_size=s["patch_size"], hidden_act="quick_gelu",
                              projection_dim=s["vision"]["hidden_size"], **s["vision"])
    text = LlamaConfig(vocab_size=-(-(base + 2) // 64) * 64, hidden_act="silu", rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=base + 1, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **text_spec)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=base,
                       image_seq_length=num_image_tokens(s["image_size"], s["patch_size"]),
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default", tie_word_embeddings=False)


def build_processor(size: str = "embedded"):
    """The ``LlavaProcessor`` of a size: trained tokenizer + CLIP image processor + ``<image>`` expansion."""
    s = _spec(size)
    tok = train_tokenizer(s["base_vocab"])
    return make_llava_processor(tok, build_image_processor(s["image_size"]), s["patch_size"])


def build_model(size: str = "embedded", seed: int = 0, text_layers: int | None = None, **reordering):
    """A randomly initialised model of ``size``, seeded (fp32, eval mode); ``text_layers`` as
    :func:`tiny_llava_config` takes it.

    Plain ``LlavaForConditionalGeneration``; with reordering settings (fields of
    :class:`gpslib.reordering_config.ReorderingLlavaConfig`, e.g. ``reorder="cosine"``), a
    :class:`~gpslib.reordering.ReorderingLlavaForConditionalGeneration` whose shared weights are
    those of the plain model of the same seed, and whose assistant separator comes from the
    size's tokenizer.
    """
    config = tiny_llava_config(size, text_layers)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    if reordering:
        reordering.setdefault("assistant_separator_ids", assistant_separator_ids(build_processor(size).tokenizer))
        plain = model
        model = ReorderingLlavaForConditionalGeneration(reordering_config(config, **reordering))
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        if unexpected or any(not k.startswith("reorder_gps.") for k in missing):
            raise RuntimeError(f"weights do not match the plain model: missing {missing}, unexpected {unexpected}")
        model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval()


def fix_processor(processor, config):
    """Fill a loaded ``LlavaProcessor``'s missing image-token settings from the model config.

    Hub processors saved before transformers 5.x (``bczhou/tiny-llava-v1-hf``)
    lack ``patch_size`` and the strategy, and need
    ``num_additional_image_tokens=1`` for CLIP's CLS. Raises ValueError if the
    processor's ``<image>`` expansion still differs from the vision tower's count.
    """
    vc = config.vision_config
    if processor.patch_size is None:
        processor.patch_size = vc.patch_size
        processor.num_additional_image_tokens = 1
    if processor.vision_feature_select_strategy is None:
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    crop = processor.image_processor.crop_size or {"height": vc.image_size, "width": vc.image_size}
    got = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
    got += processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    want = num_image_tokens(vc.image_size, vc.patch_size, 1, config.vision_feature_select_strategy)
    if got != want:
        raise ValueError(f"processor expands <image> to {got} tokens but the vision tower yields {want}")
    return processor


def load_model(name_or_path: str | os.PathLike, dtype=None, device=None, cache_dir=None, **reordering):
    """Load ``(model, processor)`` from a hub id or a local directory (eval mode).

    ``dtype``: a torch dtype (default fp32); ``device``: where to move the model;
    ``cache_dir``: the Hugging Face cache to read hub ids from. The processor is passed
    through :func:`fix_processor`. Reordering settings (``reorder=``, ``threshold=``,
    ``placement=``, ``gps=``, ``position_gap=``, ``position_scheme=``, ``v2pe_delta=``: the
    fields of :class:`gpslib.reordering_config.ReorderingLlavaConfig`) load the weights into a
    ``ReorderingLlavaForConditionalGeneration``; a saved reordering model comes back as one with
    its own settings (those given here override them). The assistant separator is read off
    the processor's tokenizer.
    """
    source = str(name_or_path)
    config = AutoConfig.from_pretrained(source, cache_dir=cache_dir)
    processor = LlavaProcessor.from_pretrained(source, cache_dir=cache_dir)
    if reordering or isinstance(config, ReorderingLlavaConfig):
        if getattr(config, "assistant_separator_ids", None) is None:
            reordering.setdefault("assistant_separator_ids", assistant_separator_ids(processor.tokenizer))
        config = reordering_config(config, **reordering)
        model = ReorderingLlavaForConditionalGeneration.from_pretrained(
            source, config=config, dtype=dtype or torch.float32, cache_dir=cache_dir)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(
            source, config=config, dtype=dtype or torch.float32, cache_dir=cache_dir)
    processor = fix_processor(processor, model.config)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.eval(), processor
