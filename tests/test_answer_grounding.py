"""Tests of gpslib.answer_grounding: the loss on one head's attention, the collator's masks, the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from gpslib.answer_grounding import answer_grounding_loss, answer_positions
from gpslib.data import VQACollator
from gpslib.shapes_vqa import object_patches

IMG = 7  # the image token's id in these hand-made batches


def _batch():
    """Two rows of 6 tokens: BOS, 2 image tokens, a question token, 2 answer tokens (row 1: 1)."""
    input_ids = torch.tensor([[1, IMG, IMG, 5, 8, 9], [1, IMG, IMG, 5, 8, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 8, 9], [-100, -100, -100, -100, 8, -100]])
    return input_ids, labels


def test_answer_positions_are_the_positions_that_predict_a_labelled_token():
    _, labels = _batch()
    assert answer_positions(labels).tolist() == [[False, False, False, True, True, False],
                                                 [False, False, False, True, False, False]]


def test_grounding_loss_is_minus_log_mass_on_the_named_patches_at_answer_positions_of_rows_that_name_one():
    input_ids, labels = _batch()
    attention = torch.full((2, 6, 6), 1 / 6)
    attention[0, 3] = torch.tensor([0.2, 0.5, 0.1, 0.2, 0.0, 0.0])  # 0.5 on patch 0 (position 1)
    attention[0, 4] = torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25, 0.0])
    mentioned = torch.tensor([[True, False], [False, False]])  # row 1 names nothing: left out
    loss = answer_grounding_loss(attention, labels, input_ids, IMG, mentioned, eps=0.0)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2, abs=1e-6)
    both = torch.tensor([[True, True], [False, False]])  # both patches: 0.6 and 0.5
    assert answer_grounding_loss(attention, labels, input_ids, IMG, both, eps=0.0).item() == pytest.approx(
        -(math.log(0.6) + math.log(0.5)) / 2, abs=1e-6)


def test_grounding_loss_pulls_attention_towards_the_named_patches():
    input_ids, labels = _batch()
    scores = torch.zeros(2, 6, 6, requires_grad=True)
    loss = answer_grounding_loss(scores.softmax(-1), labels, input_ids, IMG, torch.tensor([[False, True], [True, False]]))
    loss.backward()
    grad = scores.grad
    assert grad[0, 3, 2] < 0 and grad[0, 3, 1] > 0  # descending raises the named patch, lowers the other
    assert grad[1, 3, 1] < 0 and grad[1, 3, 2] > 0
    assert torch.all(grad[:, :3] == 0) and torch.all(grad[0, 5] == 0)  # only answer positions


def test_grounding_loss_of_a_batch_that_names_nothing_is_zero_and_differentiable():
    input_ids, labels = _batch()
    attention = torch.full((2, 6, 6), 1 / 6, requires_grad=True)
    loss = answer_grounding_loss(attention, labels, input_ids, IMG, torch.zeros(2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and attention.grad is not None


def test_grounding_loss_rejects_masks_that_do_not_line_up_naming_the_shapes():
    input_ids, labels = _batch()
    attention = torch.full((2, 6, 6), 1 / 6)
    with pytest.raises(ValueError, match=r"M=3 image tokens.*\[2, 2\]"):
        answer_grounding_loss(attention, labels, input_ids, IMG, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 6, 5\)"):
        answer_grounding_loss(attention[..., :5], labels, input_ids, IMG, torch.zeros(2, 2, dtype=torch.bool))


def test_collator_marks_the_patches_of_the_objects_each_question_names(processor, rows):
    collator = VQACollator(processor, "train", mentioned=True)
    batch = collator(rows)
    assert "mentioned_patches" in batch and "reorder_assignment" not in batch
    mask = batch["mentioned_patches"]
    assert mask.shape == (len(rows), collator.num_image_tokens) and mask.dtype == torch.bool
    named_any = 0
    for b, row in enumerate(rows):
        named = {m["object_index"] for m in row["mentions"]}
        size = row["images"][0].size[0]
        patch = size // int(round(collator.num_image_tokens ** 0.5))
        expected = torch.zeros(collator.num_image_tokens, dtype=torch.bool)
        covered = set()
        for index, obj in enumerate(row["objects"]):  # where objects overlap, the first one wins
            for p in object_patches(obj["box"], size, patch):
                if p not in covered:
                    covered.add(p)
                    expected[p] = index in named
        assert torch.equal(mask[b], expected)
        named_any += bool(named)
    assert 0 < named_any  # the rows exercise the mask
    plain = VQACollator(processor, "train")(rows)
    assert all(torch.equal(plain[k], batch[k]) for k in plain)  # the flag adds, changes nothing else


def test_on_a_collated_batch_the_answer_positions_run_from_the_assistant_marker_to_the_token_before_eos(processor, rows):
    batch = VQACollator(processor, "train", mentioned=True)(rows)
    positions = answer_positions(batch["labels"])
    tokenizer = processor.tokenizer
    for b in range(len(rows)):
        where = positions[b].nonzero().flatten().tolist()
        assert where == list(range(where[0], where[-1] + 1))  # one answer: one run of positions
        assert tokenizer.decode(batch["input_ids"][b, where[0]]).strip().endswith(":")  # "ASSISTANT:" ends there
        assert batch["labels"][b, where[-1] + 1].item() == tokenizer.eos_token_id  # the last one predicts </s>
