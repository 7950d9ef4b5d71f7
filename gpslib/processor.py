"""The offline tokenizer and the LLaVA processor of the embedded and stand-in models.

No hub is reachable, so the tokenizer is trained here, with the
``tokenizers`` library, on the ShapesVQA corpus (the chat-formatted
questions and answers), as a byte-level-fallback BPE in the real model's
(LLaMA/TinyLlama) layout:

* ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``; ids 3..258 the 256 byte
  tokens ``<0x00>``..``<0xFF>``, so any text encodes;
* then the learned pieces, padded with ``<unused_i>`` fillers up to
  ``base_vocab_size`` (32000 for the mirror of the real model);
* then ``<image>`` = ``base_vocab_size`` and ``<pad>`` = ``base_vocab_size + 1``,
  at the end of the vocabulary as in ``bczhou/tiny-llava-v1-hf``.

It is wrapped as transformers' ``LlamaTokenizer`` (a fast tokenizer; in
transformers 5.x ``LlamaTokenizerFast`` is an alias of it). Training takes
about a second and is cached per process.

The image side is a CLIP image processor (the PIL backend when torchvision is
absent, which transformers 5.x would otherwise fall back to with a warning),
and :func:`make_llava_processor` builds a ``LlavaProcessor`` whose ``<image>``
expansion equals the vision tower's token count under the ``"default"``
strategy: ``(image_size // patch_size) ** 2`` (CLS dropped).
"""

from __future__ import annotations

import functools
import importlib.util
import json

from gpslib.chat_format import CHAT_TEMPLATE, IMAGE_TOKEN, format_example
from gpslib.shapes_vqa import make_sample

__all__ = [
    "PAD_TOKEN",
    "shapes_corpus",
    "corpus_token_ids",
    "train_tokenizer",
    "build_image_processor",
    "make_llava_processor",
    "num_image_tokens",
]

PAD_TOKEN = "<pad>"
_SPECIALS = ("<unk>", "<s>", "</s>")
_BYTES = tuple(f"<0x{i:02X}>" for i in range(256))
_MAX_PIECES = 1024  # learned pieces kept at most; smaller vocabularies keep the first (most frequent) ones


def shapes_corpus(num_samples: int = 10000, seed: int = 0) -> list[str]:
    """Chat-formatted ShapesVQA training texts (no images drawn), the tokenizer's corpus."""
    texts = []
    for i in range(num_samples):
        row = make_sample(i, seed=seed, split="train", with_image=False)
        texts.append(format_example(row["messages"][0]["content"][1]["text"], row["messages"][1]["content"][0]["text"]))
    return texts


def corpus_token_ids(tokenizer, num_samples: int = 2000, seed: int = 0) -> list[int]:
    """The token ids ``tokenizer`` produces on ShapesVQA's training texts: the tokens a model trained
    on them has seen (sorted). The byte-fallback and filler tokens of the vocabulary are not among them."""
    seen = set()
    for ids in tokenizer(shapes_corpus(num_samples, seed), add_special_tokens=False)["input_ids"]:
        seen.update(ids)
    return sorted(seen)


@functools.lru_cache(maxsize=4)
def _trained_pieces(num_samples: int, seed: int, max_pieces: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Learned BPE pieces (in id order, specials and bytes excluded) and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # "\n" isolated so the word after "<image>\n" is learned unprefixed, as it is encoded
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    trainer = trainers.BpeTrainer(vocab_size=max_pieces + len(_SPECIALS), special_tokens=[*_SPECIALS, IMAGE_TOKEN],
                                  show_progress=False, min_frequency=2)
    tok.train_from_iterator(shapes_corpus(num_samples, seed), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    pieces = tuple(t for t, _ in vocab if t not in _SPECIALS and t not in _BYTES and t != IMAGE_TOKEN)
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return pieces, merges


def train_tokenizer(base_vocab_size: int = 768, num_samples: int = 10000, seed: int = 0):
    """A LLaMA-layout BPE tokenizer trained on ShapesVQA, with ``<image>``/``<pad>`` after ``base_vocab_size``.

    Returns a transformers ``LlamaTokenizer`` (fast) with bos ``<s>`` = 1,
    eos ``</s>`` = 2, unk ``<unk>`` = 0, ``<image>`` = ``base_vocab_size``,
    ``<pad>`` = ``base_vocab_size + 1``, a BOS added to every encoding, and
    :data:`CHAT_TEMPLATE`. Raises ValueError if ``base_vocab_size`` cannot hold
    the specials and the 256 byte tokens.
    """
    from transformers import LlamaTokenizer

    reserved = len(_SPECIALS) + len(_BYTES)
    if base_vocab_size < reserved + 64:
        raise ValueError(f"base_vocab_size {base_vocab_size} is too small; need at least {reserved + 64}")
    pieces, merges = _trained_pieces(num_samples, seed, _MAX_PIECES)  # one training serves every size
    vocab = {t: i for i, t in enumerate(_SPECIALS + _BYTES)}
    for t in pieces:
        if len(vocab) >= base_vocab_size:
            break
        vocab.setdefault(t, len(vocab))
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    i = 0
    while len(vocab) < base_vocab_size:
        vocab[f"<unused_{i}>"] = len(vocab)
        i += 1
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_prefix_space=True, legacy=False,
                         add_bos_token=True, add_eos_token=False, chat_template=CHAT_TEMPLATE)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)  # first, so <image> gets the lower id
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return _ordered_specials(tok, base_vocab_size)


def _ordered_specials(tok, base_vocab_size: int):
    """Check ``<image>`` = base and ``<pad>`` = base + 1 (the real model's order)."""
    image_id, pad_id = tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.convert_tokens_to_ids(PAD_TOKEN)
    if (image_id, pad_id) != (base_vocab_size, base_vocab_size + 1):
        raise RuntimeError(f"special ids came out as <image>={image_id}, <pad>={pad_id}")
    tok.image_token = IMAGE_TOKEN
    tok.image_token_id = image_id
    return tok


def build_image_processor(image_size: int):
    """A CLIP image processor (OpenAI CLIP mean/std, bicubic resize, centre crop) to ``image_size`` pixels."""
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import CLIPImageProcessor as cls
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as cls
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def num_image_tokens(image_size: int, patch_size: int, num_additional_image_tokens: int = 1,
                     vision_feature_select_strategy: str = "default") -> int:
    """Image tokens a CLIP tower yields: patches, plus CLS, minus CLS under ``"default"``."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    n = (image_size // patch_size) ** 2 + num_additional_image_tokens
    return n - 1 if vision_feature_select_strategy == "default" else n


def make_llava_processor(tokenizer, image_processor, patch_size: int):
    """A ``LlavaProcessor`` expanding ``<image>`` to the vision tower's token count.

    Uses ``vision_feature_select_strategy="default"`` and
    ``num_additional_image_tokens=1`` (CLIP's CLS), the settings
    ``bczhou/tiny-llava-v1-hf`` needs under transformers 5.x.
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)
