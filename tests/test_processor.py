"""Tests of gpslib.processor: the offline tokenizer, chat format and image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpslib.processor import (
    build_image_processor,
    make_llava_processor,
    num_image_tokens,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(768)


@pytest.mark.parametrize("base", [768, 32000])
def test_special_ids_follow_the_real_model_layout(base):
    t = train_tokenizer(base)
    ids = t.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    assert ids == [0, 1, 2, base, base + 1]
    assert (t.unk_token_id, t.bos_token_id, t.eos_token_id, t.pad_token_id) == (0, 1, 2, base + 1)
    assert len(t) == base + 2


@pytest.mark.parametrize("text", ["What colour is the circle?", "héllo wörld, 日本語 ✓ 🎲", "tabs\tand\nnewlines  "])
def test_any_text_round_trips_through_byte_fallback(tok, text):
    ids = tok(text).input_ids
    assert 0 not in ids  # never <unk>
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_prompt_starts_with_bos_and_image_is_one_token(tok):
    ids = tok("USER: <image>\nHow many shapes are there? ASSISTANT:").input_ids
    assert ids[0] == 1 and ids.count(768) == 1 and 2 not in ids
    assert len(tok("How many shapes are there?").input_ids) <= 8  # the corpus' words are learned pieces


def test_image_processor_gives_normalised_square_pixels():
    proc = build_image_processor(32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP's, per channel
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    for value in (255, 0):
        img = Image.fromarray(np.full((48, 40, 3), value, np.uint8))  # not square: resized and cropped
        pv = proc(images=[img], return_tensors="pt").pixel_values
        assert tuple(pv.shape) == (1, 3, 32, 32)
        expected = ((value / 255 - mean) / std)[None, :, None, None].expand(1, 3, 32, 32)
        torch.testing.assert_close(pv, expected, atol=1e-5, rtol=0)


def test_processor_expands_image_placeholder_to_patch_count(tok):
    proc = make_llava_processor(tok, build_image_processor(32), patch_size=8)
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    enc = proc(images=[img], text=["USER: <image>\nIs it red? ASSISTANT:"], return_tensors="pt")
    assert int((enc.input_ids == 768).sum()) == 16 == num_image_tokens(32, 8)


def test_bad_sizes_raise_value_errors():
    with pytest.raises(ValueError, match="100"):
        train_tokenizer(100)
    with pytest.raises(ValueError, match="patch_size 10"):
        num_image_tokens(64, 10)


def test_corpus_tokens_are_what_the_training_texts_encode_to_and_no_byte_fallbacks(tok):
    from gpslib.processor import corpus_token_ids

    ids = corpus_token_ids(tok, num_samples=300)
    assert set(tok("What colour is the circle? ASSISTANT:", add_special_tokens=False).input_ids) <= set(ids)
    assert ids == sorted(set(ids)) and len(ids) < len(tok) // 2
    names = tok.convert_ids_to_tokens(ids)
    assert "▁circle" in names and not any(n.startswith("<0x") or n.startswith("<unused") for n in names)
