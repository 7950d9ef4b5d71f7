"""Properties of gpslib.evaluation: answers, accuracy against chance, intervals over seeds."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from gpslib import evaluation as ev
from gpslib.chat_format import first_turn
from gpslib.data import VQACollator
from gpslib.generation import predict
from gpslib.shapes_vqa import CHANCE, SHORT_ANSWER_TYPES, shapes_vqa


def test_accuracy_table_scores_answers_against_chance():
    preds = pd.DataFrame({"question_type": ["colour", "colour", "existence", "describe"],
                          "correct": [True, False, True, None]})
    table = ev.accuracy_table(preds)
    assert list(table.index) == ["colour", "existence", "all"]
    assert table.loc["colour", "accuracy"] == 0.5 and table.loc["colour", "chance"] == pytest.approx(1 / 6)
    assert table.loc["all", "n"] == 3 and table.loc["all", "accuracy"] == pytest.approx(2 / 3)
    assert set(CHANCE) == set(SHORT_ANSWER_TYPES)


def test_accuracy_by_form_separates_count_forms_and_finds_a_constant_answer():
    preds = pd.DataFrame({
        "question_type": ["count", "count", "count", "count", "existence", "existence", "colour", "describe"],
        "question": ["How many shapes are there?", "How many red shapes are there?", "How many circles can you see?",
                     "Count the blue objects.", "Is there a red circle in the image?", "Can you see a blue cross?",
                     "What colour is the circle?", "Describe the image."],
        "short_answer": ["two", "zero", "one", "zero", "yes", "no", "red", ""],
        "generated": ["There are two shapes.", "There are zero red shapes.", "There are zero circles.",
                      "I can count 0 blue shapes.", "No, I cannot see a red circle.", "No, I cannot see a blue cross.",
                      "It is red or blue.", "A picture."],
        "correct": [True, True, False, True, False, True, False, None]})
    table = ev.accuracy_by_form(preds)
    assert list(table.index) == [("colour", "all"), ("count", "all objects"), ("count", "named, answer one or more"),
                                 ("count", "named, answer zero"), ("existence", "answer no"), ("existence", "answer yes")]
    assert table.loc[("count", "named, answer zero"), "n"] == 2
    assert table.loc[("count", "named, answer zero"), "most_given"] == "zero"  # "0" and "zero" are one value
    assert table.loc[("count", "named, answer one or more"), "accuracy"] == 0.0
    assert table.loc[("existence", "answer yes"), "most_given"] == "no"
    assert table.loc[("colour", "all"), "most_given"] == "(none)"  # two colours named: no single answer
    assert table["most_given_share"].eq(1.0).all()
    sentences = ev.constant_answers(table)
    assert sentences == [
        "count: the answer 'zero' to every question of each form; accuracy named, answer one or more 0.00 (n=1), "
        "named, answer zero 1.00 (n=2).",
        "existence: the answer 'no' to every question of each form; accuracy answer no 1.00 (n=1), answer yes 0.00 (n=1)."]
    silent = table.copy()
    silent["most_given"] = "(none)"
    assert ev.constant_answers(silent)[0].startswith("No question type")  # naming nothing is not one answer
    varied = table.copy()
    varied.loc[("existence", "answer yes"), ["most_given", "accuracy"]] = ["yes", 1.0]
    varied.loc[("count", "named, answer one or more"), "most_given_share"] = 0.5
    assert ev.constant_answers(varied) == ["No question type gets one answer to 95% or more of the questions of every form."]


class _Parrot(torch.nn.Module):
    """A stand-in model whose ``generate`` answers each prompt with ``answers[question]``, then </s>."""

    dtype = torch.float32

    def __init__(self, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # predict reads the device off a parameter
        self.config = SimpleNamespace(reorder="none")
        self.tokenizer, self.answers = tokenizer, answers

    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens, do_sample):
        tok = self.tokenizer
        new = torch.full((len(input_ids), max_new_tokens), tok.pad_token_id)
        for b, ids in enumerate(input_ids):
            prompt = tok.decode(ids[attention_mask[b].bool()], skip_special_tokens=True)
            (question,) = [q for q in self.answers if q in prompt]
            answer = tok(self.answers[question], add_special_tokens=False).input_ids + [tok.eos_token_id]
            assert len(answer) <= max_new_tokens
            new[b, : len(answer)] = torch.tensor(answer)
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(scope="module")
def distinct_questions():
    """One ShapesVQA test row per question type (describe included), no question asked twice."""
    ds, rows, seen = shapes_vqa(80, seed=4, split="test", image_size=32), [], set()
    for i in range(len(ds)):
        row = ds[i]
        question = first_turn(row["messages"])[0]
        if row["question_type"] not in {r["question_type"] for r in rows} and question not in seen:
            rows.append(row)
            seen.add(question)
    assert len(rows) == len(SHORT_ANSWER_TYPES) + 1
    return rows


def test_predict_scores_each_generated_answer_against_its_own_rows_short_answer(processor, distinct_questions):
    rows = distinct_questions
    truth = dict(first_turn(r["messages"]) for r in rows)
    right = predict(_Parrot(processor.tokenizer, truth), processor, rows, batch_size=4, max_new_tokens=32)
    assert right["generated"].tolist() == right["answer"].tolist() == [first_turn(r["messages"])[1] for r in rows]
    short = right["question_type"].isin(SHORT_ANSWER_TYPES)
    assert right.loc[short, "correct"].tolist() == [True] * len(SHORT_ANSWER_TYPES)
    assert right.loc[~short, "correct"].isna().all()  # describe has no short answer
    wrong = predict(_Parrot(processor.tokenizer, dict.fromkeys(truth, "I do not know.")), processor, rows,
                    batch_size=4, max_new_tokens=32)
    assert wrong.loc[short, "correct"].tolist() == [False] * len(SHORT_ANSWER_TYPES)
    assert ev.accuracy_table(right)["accuracy"].eq(1.0).all() and ev.accuracy_table(wrong)["accuracy"].eq(0.0).all()


def test_predict_rejects_a_bad_batch_size_by_name():
    with pytest.raises(ValueError, match="batch_size=0"):
        predict(None, None, [], batch_size=0)


@torch.no_grad()
def test_image_reliance_is_the_loss_with_own_images_against_the_loss_with_another_rows_image(
        plain, processor, rows):
    model = copy.deepcopy(plain)
    model.model.multi_modal_projector.linear_2.weight.mul_(10.0)  # louder image tokens: a visible gap
    # batches of two rows: shuffling images within a batch can only swap the pair's images
    out = ev.image_reliance(model, processor, rows, batch_size=2)
    own, swapped = [], []
    for pair in (rows[:2], rows[2:4]):
        batch = VQACollator(processor, "train")(pair)
        own.append(float(model(**batch).loss))
        swapped.append(float(model(**dict(batch, pixel_values=batch["pixel_values"].flip(0))).loss))
    assert out["loss"] == pytest.approx(sum(own) / 2, abs=1e-6)
    assert out["shuffled_loss"] == pytest.approx(sum(swapped) / 2, abs=1e-6)
    assert out["gap"] == pytest.approx(out["shuffled_loss"] - out["loss"], abs=1e-9)
    assert abs(out["gap"]) > 1e-4  # measured 8e-4: 100 times the tolerances above
    with pytest.raises(ValueError, match="batch_size=1"):
        ev.image_reliance(model, processor, rows, batch_size=1)


def test_accuracy_goal_needs_the_overall_level_and_every_type_above_chance():
    table = pd.DataFrame({"n": [10, 10, 20], "accuracy": [0.9, 0.36, 0.72], "chance": [1 / 6, 0.2, 0.3]},
                         index=["colour", "shape", "all"])
    met, text = ev.accuracy_goal(table)
    assert met and "meets" in text
    table.loc["shape", "accuracy"] = 0.34  # 14 points above chance
    met, text = ev.accuracy_goal(table)
    assert not met and "shape 0.3400" in text
    table.loc["shape", "accuracy"], table.loc["all", "accuracy"] = 0.5, 0.69
    met, text = ev.accuracy_goal(table)
    assert not met and "0.6900 (< 0.7)" in text


def test_goal_accuracies_are_chance_plus_the_margin_per_type_and_the_overall_level_for_all():
    table = pd.DataFrame({"n": [10, 10, 20], "accuracy": [0.9, 0.36, 0.72], "chance": [1 / 6, 0.2, 0.3]},
                         index=["colour", "shape", "all"])
    goal = ev.goal_accuracies(table, overall=0.8, margin=0.1)
    assert goal.to_dict() == pytest.approx({"colour": 1 / 6 + 0.1, "shape": 0.3, "all": 0.8})
    met_by_row = table["accuracy"] >= ev.goal_accuracies(table)
    assert met_by_row.all() == ev.accuracy_goal(table)[0]
    table.loc["shape", "accuracy"] = 0.2 + ev.GOAL_MARGIN  # exactly at the goal: both call it met
    assert (table["accuracy"] >= ev.goal_accuracies(table)).all() and ev.accuracy_goal(table)[0]
    table.loc["shape", "accuracy"] = 0.2 + ev.GOAL_MARGIN - 1e-9  # just below: both call it missed
    assert not (table["accuracy"] >= ev.goal_accuracies(table)).all() and not ev.accuracy_goal(table)[0]
