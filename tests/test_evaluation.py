"""Properties of gpslib.evaluation: answers, accuracy against chance, intervals over seeds."""

from __future__ import annotations

import pandas as pd
import pytest

from gpslib import evaluation as ev
from gpslib import pretrain as pt
from gpslib.generation import predict
from gpslib.model import MODEL_SIZES
from gpslib.shapes_vqa import CHANCE, SHORT_ANSWER_TYPES, shapes_vqa
TINY = dict(size="test", steps=6, batch_size=4, lr=3e-3, warmup=1, weight_decay=0.0, grad_clip=1.0,
            vision_lr_scale=0.1)


def test_accuracy_table_scores_answers_against_chance():
    preds = pd.DataFrame({"question_type": ["colour", "colour", "existence", "describe"],
                          "correct": [True, False, True, None]})
    table = ev.accuracy_table(preds)
    assert list(table.index) == ["colour", "existence", "all"]
    assert table.loc["colour", "accuracy"] == 0.5 and table.loc["colour", "chance"] == pytest.approx(1 / 6)
    assert table.loc["all", "n"] == 3 and table.loc["all", "accuracy"] == pytest.approx(2 / 3)
    assert set(CHANCE) == set(SHORT_ANSWER_TYPES)


def test_predicted_answers_are_scored_per_question_type():
    model, processor, _ = pt.pretrain(seed=0, progress=False, save=False, **TINY)
    ds = shapes_vqa(6, split="test", image_size=MODEL_SIZES["test"]["image_size"], question_types=SHORT_ANSWER_TYPES)
    preds = predict(model, processor, ds, batch_size=4, max_new_tokens=4)
    assert len(preds) == 6 and preds["generated"].map(type).eq(str).all()
    table = ev.accuracy_table(preds)
    assert table.loc["all", "n"] == 6 and 0 <= table.loc["all", "accuracy"] <= 1


def test_predict_rejects_a_bad_batch_size_by_name():
    with pytest.raises(ValueError, match="batch_size=0"):
        predict(None, None, [], batch_size=0)


def test_image_reliance_compares_own_and_swapped_images():
    model, processor, _ = pt.pretrain(seed=0, progress=False, save=False, **TINY)
    ds = shapes_vqa(6, split="test", image_size=MODEL_SIZES["test"]["image_size"])
    out = ev.image_reliance(model, processor, ds, batch_size=3)
    assert set(out) == {"loss", "shuffled_loss", "gap"}
    assert out["gap"] == pytest.approx(out["shuffled_loss"] - out["loss"])
    with pytest.raises(ValueError, match="batch_size=1"):
        ev.image_reliance(model, processor, ds, batch_size=1)
