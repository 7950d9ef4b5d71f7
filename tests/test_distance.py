"""Properties of gpslib.distance: the position-gap experiment, its table, attention and verdict."""

import numpy as np
import pandas as pd
import pytest
import torch

from gpslib.distance import (
    CONDITIONS,
    attention_to_objects,
    condition_settings,
    distance_table,
    distance_verdict,
    run_distance_experiment,
)
from gpslib.shapes_vqa import SHORT_ANSWER_TYPES, shapes_vqa


@pytest.fixture(scope="module")
def questions():
    ds = shapes_vqa(6, seed=0, split="test", image_size=32, question_types=SHORT_ANSWER_TYPES)
    return [ds[i] for i in range(len(ds))]


def test_every_condition_runs_at_every_gap_and_restores_the_model(reordering_model, processor, questions):
    model = reordering_model("none")
    out = run_distance_experiment(model, processor, questions, gaps=[0, 64], batch_size=4, max_new_tokens=3)
    assert len(out) == len(CONDITIONS) * 2 * len(questions)
    assert set(out["condition"]) == set(CONDITIONS) and set(out["gap"]) == {0, 64}
    assert out["loglik"].lt(0).all() and out["correct"].isin([True, False]).all()
    assert (model.config.reorder, model.config.position_gap, model.config.position_scheme) == ("none", 0, "sequential")
    # the gap changes the none condition's log-likelihoods (it is not ignored)
    none = out[out["condition"] == "none"].pivot(index="question", columns="gap", values="loglik")
    assert not np.allclose(none[0], none[64])


def test_table_has_the_issue_columns_and_intervals_around_the_mean():
    rng = np.random.default_rng(0)
    results = pd.DataFrame({"condition": "none", "gap": 0, "question": range(400),
                            "question_type": rng.choice(["colour", "shape"], 400),
                            "correct": rng.random(400) < 0.7, "loglik": -rng.random(400)})
    table = distance_table(results, n_boot=300)
    assert {"gap", "strategy", "question_type", "accuracy", "ci_low", "ci_high", "n"} <= set(table.columns)
    assert set(table["question_type"]) == {"colour", "shape", "all"}
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    assert int(table.loc[table.question_type == "all", "n"].iloc[0]) == 400


def _results(none_drop, oracle_drop, n=600, seed=0, oracle_level=0.8):
    rng = np.random.default_rng(seed)
    frames = []
    for condition, drop in (("none", none_drop), ("oracle", oracle_drop)):
        base = rng.random(n) < (oracle_level if condition == "oracle" else 0.8)
        far = base & (rng.random(n) >= drop / 0.8)  # lose a share of the right answers at the far gap
        for gap, correct in ((0, base), (512, far)):
            frames.append(pd.DataFrame({"condition": condition, "gap": gap, "question": range(n),
                                        "question_type": "colour", "correct": correct, "loglik": -1.0}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("none_drop, oracle_drop, expected", [
    (0.30, 0.0, "Supported at this scale"),
    (0.30, 0.30, "Distance hurts at this scale"),
    (0.0, 0.0, "Not supported at this scale"),
])
def test_verdict_follows_the_numbers(none_drop, oracle_drop, expected):
    text = distance_verdict(_results(none_drop, oracle_drop), n_boot=300)
    assert f"Verdict on the paper's hypothesis: {expected}" in text
    assert "none: accuracy" in text and "oracle: accuracy" in text


@pytest.mark.parametrize("oracle_level, expected", [
    (0.3, "But the oracle order answers worse than the original order at every gap measured, the largest (512)"),
    (0.8, "Against the original order, the oracle order answers better at g = 512; no differently beyond the "
          "intervals at g = 0."),
    (0.97, "The oracle order also answers better than the original order at every gap measured."),
])
def test_the_levels_beside_the_slopes_say_where_the_oracle_order_answers_worse_than_none(oracle_level, expected):
    text = distance_verdict(_results(0.30, 0.0, oracle_level=oracle_level), n_boot=300)
    assert "Verdict on the paper's hypothesis: Supported at this scale" in text  # the slopes' verdict is unchanged
    assert expected in text and "oracle minus none, accuracy at each gap: g=0 " in text


@torch.no_grad()
def test_attention_mass_is_a_share_per_layer_for_every_condition_and_gap(reordering_model, processor, questions):
    model = reordering_model("none")
    before = model.config.text_config._attn_implementation
    named = [q for q in questions if q["mentions"]]
    att = attention_to_objects(model, processor, named, gaps=[0, 100], batch_size=3)
    layers = model.config.text_config.num_hidden_layers
    assert len(att) == 2 * 2 * layers and set(att["strategy"]) == {"none", "oracle"}
    assert att["mass"].between(0, 1).all() and att["uniform"].between(0, 1).all()
    assert model.config.text_config._attn_implementation == before and model.config.position_gap == 0
    none = att[att.strategy == "none"].pivot(index="layer", columns="gap", values="mass")
    assert not np.allclose(none[0], none[100])  # the gap changes where the words look


def test_unknown_condition_and_too_few_gaps_raise_value_errors():
    with pytest.raises(ValueError, match="'shuffle'"):
        condition_settings("shuffle", 0)
    with pytest.raises(ValueError, match="two gaps"):
        distance_verdict(_results(0.1, 0.0).query("gap == 0"))
