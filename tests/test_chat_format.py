"""Properties of gpslib.chat_format: the conversation format, its chat template and the separator ids."""

from __future__ import annotations

import random

import pytest

from conftest import vsft_messages
from gpslib.chat_format import (
    ASSISTANT_SEPARATOR,
    CHAT_TEMPLATE,
    assistant_separator_ids,
    conversation_text,
    first_turn,
    format_example,
    format_prompt,
)


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


def test_prompt_and_training_text_follow_the_real_format():
    assert format_prompt("Is it red?") == "USER: <image>\nIs it red? ASSISTANT:"
    assert format_example("Is it red?", "Yes.") == "USER: <image>\nIs it red? ASSISTANT: Yes.</s>"
    text, spans = conversation_text(vsft_messages("Is it red?", "Yes."))
    assert text == "USER: <image>\nIs it red? ASSISTANT: Yes.</s>"
    assert [text[a:b] for a, b in spans] == ["Yes.</s>"]
    assert first_turn(vsft_messages("q", "a")) == ("q", "a")


def test_chat_template_renders_exactly_what_conversation_text_writes(tok):
    rng = random.Random(0)
    words = ["red", "circle", " padded ", "Is it?", "two\nlines", "ünï"]
    for _ in range(30):
        messages = []
        for turn in range(rng.randint(1, 3)):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            messages += vsft_messages(q, a, n_image_parts=1 if turn == 0 else 0)
        for generation in (False, True):
            shown = messages[:-1] if generation else messages
            expected = conversation_text(shown, add_generation_prompt=generation)[0]
            assert tok.apply_chat_template(shown, tokenize=False, chat_template=CHAT_TEMPLATE,
                                           add_generation_prompt=generation) == expected


def test_separator_ids_are_the_tokens_that_end_an_encoded_prompt(tok):
    ids = assistant_separator_ids(tok)
    encoded = tok(format_prompt("How many shapes are there?")).input_ids
    assert encoded[-len(ids):] == ids
    assert tok.decode(ids).strip() == ASSISTANT_SEPARATOR


def test_unknown_roles_and_missing_turns_raise_value_errors():
    with pytest.raises(ValueError, match="system"):
        conversation_text([{"role": "system", "content": []}])
    with pytest.raises(ValueError, match="roles"):
        first_turn(vsft_messages("q", "a")[:1])
