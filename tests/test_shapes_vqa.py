"""Tests of gpslib.shapes_vqa: schema, determinism, disjoint splits, grounding, scoring."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import pandas as pd
from PIL import Image

from gpslib.shapes_vqa import (
    COLOURS,
    QUESTION_TYPES,
    LazyShapesVQA,
    answer_correct,
    answer_values,
    draw_scene,
    make_sample,
    object_patches,
    question_type_weights,
    scene_split,
    shapes_vqa,
)


@pytest.fixture(scope="module")
def rows_64px():
    """120 rows at 64 px (not conftest's 4 rows at 32 px)."""
    return [make_sample(i, seed=3, image_size=64) for i in range(120)]


def test_rows_follow_the_llava_instruct_mix_vsft_schema():
    ds = shapes_vqa(5, seed=0, image_size=64)
    row = ds[0]
    assert {"messages", "images"} <= set(row)
    user, assistant = row["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert user["content"][0] == {"type": "image", "text": None}
    assert user["content"][1]["type"] == "text" and user["content"][1]["text"]
    assert [p["type"] for p in assistant["content"]] == ["text"]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert row["images"][0].size == (64, 64) and row["images"][0].mode == "RGB"
    assert row["question_type"] in QUESTION_TYPES
    for o in row["objects"]:
        assert set(o) == {"shape", "colour", "size", "box"} and len(o["box"]) == 4


def test_same_seed_gives_identical_rows_and_other_seed_differs():
    a, b, c = shapes_vqa(6, seed=7), shapes_vqa(6, seed=7), shapes_vqa(6, seed=8)
    for i in range(6):
        ra, rb = a[i], b[i]
        assert ra["messages"] == rb["messages"] and ra["objects"] == rb["objects"]
        assert np.array_equal(np.asarray(ra["images"][0]), np.asarray(rb["images"][0]))
    assert [a[i]["objects"] for i in range(6)] != [c[i]["objects"] for i in range(6)]


def test_row_does_not_depend_on_dataset_length_or_access_order():
    small, big = shapes_vqa(3, seed=1), shapes_vqa(300, seed=1, chunk_size=128)
    assert big[2]["messages"] == small[2]["messages"]
    picked = big.select([207, 2])
    assert [r["messages"] for r in picked] == [big[207]["messages"], small[2]["messages"]]
    assert big[207]["messages"] == make_sample(207, seed=1)["messages"]  # across a chunk boundary
    shuffled = big.shuffle(seed=0)
    assert len(shuffled) == 300 and shuffled[0]["question_type"] in QUESTION_TYPES


def _same_row(a, b):
    assert {k: v for k, v in a.items() if k != "images"} == {k: v for k, v in b.items() if k != "images"}
    assert len(a["images"]) == len(b["images"]) == 1
    assert np.array_equal(np.asarray(a["images"][0]), np.asarray(b["images"][0]))


def test_dataset_columns_and_features_show_every_field():
    import datasets

    ds = shapes_vqa(4, seed=2, image_size=32)
    columns = ["messages", "images", "question_type", "short_answer", "objects", "mentions"]
    assert ds.column_names == columns and list(ds.features) == columns
    assert isinstance(ds.features["images"], datasets.List) and isinstance(ds.features["images"].feature, datasets.Image)
    assert set(ds.features["messages"].feature) == {"role", "content"}
    assert set(ds.features["messages"].feature["content"].feature) == {"type", "text"}
    assert set(ds.features["objects"].feature) == {"shape", "colour", "size", "box"}
    assert set(ds.features["mentions"].feature) == {"word", "object_index", "start", "end"}
    for i in range(4):  # PNG round trip: the stored rows are make_sample's, pixel for pixel
        _same_row(ds[i], make_sample(i, seed=2, image_size=32))


def test_lazy_rows_equal_the_dataset_rows():
    lazy, ds = LazyShapesVQA(5, seed=4, split="test", image_size=32), shapes_vqa(5, seed=4, split="test", image_size=32)
    assert len(lazy) == len(ds) == 5 and isinstance(lazy, torch.utils.data.Dataset)
    for i in range(5):
        _same_row(lazy[i], ds[i])
    _same_row(lazy[-1], ds[4])
    with pytest.raises(IndexError, match="5"):
        lazy[5]
    with pytest.raises(ValueError, match="validation"):
        LazyShapesVQA(3, split="validation")


def test_save_to_disk_and_load_from_disk_round_trip(tmp_path):
    import datasets

    ds = shapes_vqa(3, seed=5, image_size=32)
    ds.save_to_disk(tmp_path / "shapes")
    loaded = datasets.load_from_disk(tmp_path / "shapes")
    assert loaded.features == ds.features and len(loaded) == 3
    for i in range(3):
        _same_row(loaded[i], ds[i])


def test_pandas_remove_columns_and_map_see_the_real_columns():
    ds = shapes_vqa(6, seed=6, image_size=32)
    df = ds.to_pandas()
    assert list(df.columns) == ds.column_names and len(df) == 6
    assert df["question_type"].tolist() == [ds[i]["question_type"] for i in range(6)]
    assert isinstance(df["images"][0][0]["bytes"], bytes)  # PNG bytes, as datasets stores images
    text = ds.remove_columns(["images", "objects", "mentions"])
    assert text.column_names == ["messages", "question_type", "short_answer"]
    counted = ds.map(lambda row: {"n_objects": len(row["objects"])}, remove_columns=["images"])
    assert counted["n_objects"] == [len(make_sample(i, seed=6, with_image=False)["objects"]) for i in range(6)]
    assert "images" not in counted.column_names and "n_objects" in counted.column_names


def test_train_and_test_scenes_are_disjoint():
    def key(r):  # scene content: shape, colour, size and grid cell (16 px cells at 64 px)
        return tuple(sorted((o["shape"], o["colour"], o["size"], (o["box"][0] + o["box"][2]) // 32,
                             (o["box"][1] + o["box"][3]) // 32) for o in r["objects"]))

    train = [make_sample(i, split="train", with_image=False) for i in range(1500)]
    test = [make_sample(i, split="test", with_image=False) for i in range(1500)]
    assert all(scene_split(r["objects"], 64) == "train" for r in train)
    assert all(scene_split(r["objects"], 64) == "test" for r in test)
    # one-object scenes repeat a lot, so equal content across splits would show up here
    one_train = {key(r) for r in train if len(r["objects"]) == 1}
    one_test = {key(r) for r in test if len(r["objects"]) == 1}
    assert len(one_train) > 100 and len(one_test) > 100 and not (one_train & one_test)
    with pytest.raises(ValueError, match="image_size"):
        scene_split(train[0]["objects"])


def test_large_lazy_dataset_is_cheap_to_create():
    start = time.perf_counter()
    ds = LazyShapesVQA(150_000, seed=0)
    assert len(ds) == 150_000 and ds[149_999]["question_type"] in QUESTION_TYPES
    assert time.perf_counter() - start < 1.0


def test_every_question_type_occurs_and_can_be_restricted(rows_64px):
    assert {r["question_type"] for r in rows_64px} == set(QUESTION_TYPES)
    ds = shapes_vqa(20, seed=0, question_types=("count", "relation"))
    assert {ds[i]["question_type"] for i in range(20)} <= {"count", "relation"}


def test_type_weights_ask_each_type_as_often_as_weighted_and_rows_stay_deterministic():
    only_shape = LazyShapesVQA(40, seed=3, type_weights="0,1,0,0,0,0,0")
    assert {only_shape[i]["question_type"] for i in range(40)} == {"shape"}
    weighted = LazyShapesVQA(1400, seed=3, image_size=16, type_weights=(1, 2, 1, 1, 2, 2, 1))
    counts = pd.Series([weighted[i]["question_type"] for i in range(1400)]).value_counts()
    expected = {t: 1400 * w / 10 for t, w in zip(QUESTION_TYPES, (1, 2, 1, 1, 2, 2, 1))}
    for qtype, n in expected.items():  # binomial sd <= 15 rows; 4 sd
        assert abs(counts.get(qtype, 0) - n) < 60, (qtype, counts.get(qtype, 0), n)
    again = LazyShapesVQA(1400, seed=3, image_size=16, type_weights=(1, 2, 1, 1, 2, 2, 1))
    assert again[777]["messages"] == weighted[777]["messages"]
    assert "type_weights" in repr(weighted)


@pytest.mark.parametrize("weights, word", [("1,2", "'1,2'"), ("a,b,c,d,e,f,g", "a,b"), ((0,) * 7, "not all zero"),
                                           ((1, 1, 1, 1, 1, 1, -1), "-1")])
def test_bad_type_weights_raise_value_errors_naming_them(weights, word):
    with pytest.raises(ValueError, match=word):
        question_type_weights(weights)
    with pytest.raises(ValueError, match="not both"):
        LazyShapesVQA(3, question_types=("shape",), type_weights="1,1,1,1,1,1,1")


def test_mentions_point_at_their_words_and_objects(rows_64px):
    n_mentions = 0
    for r in rows_64px:
        q = r["messages"][0]["content"][1]["text"]
        for m in r["mentions"]:
            n_mentions += 1
            assert q[m["start"]:m["end"]] == m["word"]
            o = r["objects"][m["object_index"]]
            assert m["word"] in (o["colour"], o["shape"])
    assert n_mentions > 50


def test_patches_listed_for_an_object_contain_its_pixels(rows_64px):
    image_size, patch = 64, 8
    for r in rows_64px[:30]:
        for o in r["objects"]:
            # draw the object alone without noise: its pixels are the non-background ones
            img = np.asarray(draw_scene([o], image_size, noise=0.0, rng=np.random.default_rng(0)))
            bg = np.asarray(draw_scene([], image_size, noise=0.0, rng=np.random.default_rng(0)))
            ys, xs = np.nonzero(np.any(img != bg, axis=-1))
            assert len(ys) > 0
            x0, y0, x1, y1 = o["box"]
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            listed = set(object_patches(o["box"], image_size, patch))
            touched = {(y // patch) * (image_size // patch) + x // patch for y, x in zip(ys, xs)}
            assert touched <= listed
            assert len(listed) <= len(touched) + 2 * (image_size // patch)  # no far-away patches


def test_object_pixels_keep_their_exact_colour(rows_64px):
    r = rows_64px[0]
    img = np.asarray(r["images"][0])
    for o in r["objects"]:
        x0, y0, x1, y1 = o["box"]
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert tuple(img[cy, cx]) == COLOURS[o["colour"]]


def test_object_patches_rejects_a_grid_that_does_not_divide_the_image():
    with pytest.raises(ValueError, match="patch_size"):
        object_patches([0, 0, 4, 4], 64, 10)
    with pytest.raises(ValueError, match="box"):
        object_patches([5, 5, 5, 9], 64, 8)
    assert object_patches([0, 0, 64, 64], 64, 32) == [0, 1, 2, 3]
    assert object_patches([33, 1, 40, 8], 64, 32) == [1]


def test_reference_answers_score_correct_and_swapped_values_do_not(rows_64px):
    for r in rows_64px:
        if r["question_type"] == "describe":
            continue
        answer = r["messages"][1]["content"][0]["text"]
        assert answer_correct(answer, r["short_answer"], r["question_type"]), answer
    assert answer_correct("The circle is RED.", "red", "colour")
    assert not answer_correct("The circle is red or blue.", "red", "colour")
    assert not answer_correct("It is blue.", "red", "colour")
    assert answer_correct("There are 2 circles.", "two", "count")
    assert answer_correct("I see two crosses.", "cross", "shape") is True
    assert not answer_correct("Yes and no.", "yes", "existence")
    assert answer_values("There are 2 circles.", "count") == {"two"} and answer_values("Yes and no.", "relation") == {"yes", "no"}


def test_scorer_and_builder_reject_bad_values():
    with pytest.raises(ValueError, match="describe"):
        answer_correct("anything", "", "describe")
    with pytest.raises(ValueError, match="magenta"):
        answer_correct("magenta", "magenta", "colour")
    with pytest.raises(ValueError, match="valid"):
        shapes_vqa(3, split="validation")
    with pytest.raises(ValueError, match="colours"):
        shapes_vqa(3, question_types=("colours",))
    with pytest.raises(ValueError, match="-1"):
        shapes_vqa(-1)
    with pytest.raises(ValueError, match="chunk_size"):
        shapes_vqa(3, chunk_size=0)
    assert len(shapes_vqa(0)) == 0 and shapes_vqa(0).column_names[:2] == ["messages", "images"]
