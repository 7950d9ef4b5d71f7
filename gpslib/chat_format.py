"""The conversation format of TinyLLaVA (paper Section 4.3), written once.

``bczhou/tiny-llava-v1-hf`` is trained on ``USER: <image>\\n{question} ASSISTANT: {answer}</s>``;
further turns repeat ``USER: {question} ASSISTANT: {answer}</s>``. Everything in this project
that writes or reads that format goes through this module: the collator's training texts and
generation prompts (:mod:`gpslib.data`), the tokenizer's training corpus and its Jinja chat
template (:mod:`gpslib.processor`), and the token ids of the assistant separator that end the
reorderable prompt (:func:`assistant_separator_ids`, read by :mod:`gpslib.prompt_layout`).

Rows use the ``llava-instruct-mix-vsft`` schema: ``messages`` is a list of
``{"role": "user" | "assistant", "content": [{"type": "image" | "text", "text": ...}]}``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "IMAGE_TOKEN",
    "IGNORE_INDEX",
    "ASSISTANT_SEPARATOR",
    "CHAT_TEMPLATE",
    "message_text",
    "first_turn",
    "conversation_text",
    "format_prompt",
    "format_example",
    "assistant_separator_ids",
]

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100  # the label of a token that is not scored (torch's and transformers' cross-entropy default)
USER_PREFIX = "USER: "
ASSISTANT_SEPARATOR = "ASSISTANT:"
END_OF_ANSWER = "</s>"

# The same format for transformers' ``apply_chat_template`` (tests check that it renders
# exactly what :func:`conversation_text` writes).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    f"{{% if message['role'] == 'user' %}}{USER_PREFIX}"
    f"{{% for part in message['content'] %}}{{% if part['type'] == 'image' %}}{IMAGE_TOKEN}\n{{% endif %}}{{% endfor %}}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %} "
    f"{{% else %}}{ASSISTANT_SEPARATOR} "
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}"
    f"{END_OF_ANSWER}{{% endif %}}{{% endfor %}}"
    f"{{% if add_generation_prompt %}}{ASSISTANT_SEPARATOR}{{% endif %}}"
)


def message_text(message: dict[str, Any]) -> str:
    """The text parts of one message, joined and stripped."""
    return "".join(p.get("text") or "" for p in message["content"] if p.get("type") == "text").strip()


def first_turn(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(question, answer) of the first user/assistant exchange of a row's ``messages``.

    Raises ValueError naming the roles when the row does not start with a user then an
    assistant message.
    """
    if len(messages) < 2 or messages[0]["role"] != "user" or messages[1]["role"] != "assistant":
        raise ValueError(f"messages must start with a user then an assistant turn, got roles "
                         f"{[m.get('role') for m in messages[:2]]}")
    return message_text(messages[0]), message_text(messages[1])


def conversation_text(messages: list[dict[str, Any]], add_generation_prompt: bool = False
                      ) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the ``[start, end)`` character spans of the assistant
    answers (each including its ``</s>``), the only supervised characters.

    ``add_generation_prompt`` appends the assistant separator (the prompt of a generation).
    Raises ValueError naming an unknown role.
    """
    text, spans = "", []
    for m in messages:
        if m["role"] == "user":
            n_images = sum(p.get("type") == "image" for p in m["content"])
            text += USER_PREFIX + f"{IMAGE_TOKEN}\n" * n_images + message_text(m) + " "
        elif m["role"] == "assistant":
            text += ASSISTANT_SEPARATOR + " "
            start = len(text)
            text += message_text(m) + END_OF_ANSWER
            spans.append((start, len(text)))
        else:
            raise ValueError(f"unknown role {m['role']!r}; valid roles are ['user', 'assistant']")
    if add_generation_prompt:
        text += ASSISTANT_SEPARATOR
    return text, spans


def _question_message(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}]


def format_prompt(question: str) -> str:
    """The generation prompt of a one-image question: ``USER: <image>\\n{question} ASSISTANT:``."""
    return conversation_text(_question_message(question), add_generation_prompt=True)[0]


def format_example(question: str, answer: str) -> str:
    """The training text of one exchange: ``USER: <image>\\n{question} ASSISTANT: {answer}</s>``."""
    answer_message = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    return conversation_text(_question_message(question) + [answer_message])[0]


def assistant_separator_ids(tokenizer) -> list[int]:
    """The token ids the assistant separator gets inside a prompt, as ``tokenizer`` encodes it.

    Read off the encoding of a real prompt (:func:`format_prompt`) by character offsets, so
    the ids are those the separator has in context (a SentencePiece tokenizer may encode it
    differently at the start of a text). The reorderable part of a prompt ends with them.
    Raises ValueError when the tokenizer merges the separator with its neighbours.
    """
    prompt = format_prompt("What is it?")
    start = prompt.rindex(ASSISTANT_SEPARATOR)
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False)
    ids = [t for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > start]
    first = next(s for (s, e) in enc["offset_mapping"] if e > start)
    if not ids or first < start - 1 or prompt[first:start].strip():
        raise ValueError(f"the tokenizer does not encode {ASSISTANT_SEPARATOR!r} as tokens of its own in "
                         f"{prompt!r}; cannot find where a prompt ends")
    return [int(t) for t in ids]
