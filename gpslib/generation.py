"""Greedy answers of a (reordering) LLaVA to held-out prompts (paper Section 4.4, the examples and metrics).

:func:`predict` generates answers in batches (left padded, greedy) with transformers'
``generate``, which returns the prompt followed by the answer for every model here (plain
LLaVA and :class:`gpslib.reordering.ReorderingLlavaForConditionalGeneration` alike), and
scores each answer against its short answer where the data has one (ShapesVQA,
:func:`gpslib.shapes_vqa.answer_correct`). Training (:mod:`gpslib.finetune`) and evaluation
(:mod:`gpslib.evaluation`) both call it.
"""

from __future__ import annotations

import pandas as pd
import torch

from gpslib.chat_format import first_turn
from gpslib.data import VQACollator
from gpslib.shapes_vqa import CHANCE, answer_correct

__all__ = ["unwrap_model", "predict"]


def unwrap_model(model):
    """The transformers model inside a peft / DDP wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def predict(model, processor, dataset, batch_size: int = 32, max_new_tokens: int = 20) -> pd.DataFrame:
    """Greedy answers to the first question of every row of ``dataset`` (left padded, batched).

    An ``"oracle"`` reordering model gets the rows' grounding. Returns one row per sample:
    ``question_type``, ``question``, ``answer`` (ground truth), ``short_answer``,
    ``generated`` and ``correct`` (``None`` where the row has no short answer or its type
    has none).
    """
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
    inner = unwrap_model(model)
    oracle = getattr(inner.config, "reorder", None) == "oracle"
    collate = VQACollator(processor, "generate", grounding=oracle)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    records = []
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            batch["pixel_values"] = batch["pixel_values"].to(inner.dtype)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for row, text in zip(rows, texts):
                qtype, text = row.get("question_type"), text.strip()
                short = row.get("short_answer")
                question, answer = first_turn(row["messages"])
                records.append({
                    "question_type": qtype, "question": question, "answer": answer, "short_answer": short,
                    "generated": text,
                    "correct": answer_correct(text, short, qtype) if qtype in CHANCE and short else None,
                })
    finally:
        model.train(was_training)
    return pd.DataFrame(records)
