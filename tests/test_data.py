"""Tests of gpslib.data: the real loaders on local stand-ins, chat format, collator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gpslib.chat_format import first_turn
from gpslib.data import VQACollator, load_hub_vsft, load_llava_instruct
from gpslib.model import build_model
from gpslib.shapes_vqa import shapes_vqa


def _msgs(q, a, n_image_parts=1):
    user = [{"type": "image", "text": None}] * n_image_parts + [{"type": "text", "text": q}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]


def _img(v=0):
    return Image.fromarray(np.full((20, 24, 3), v, np.uint8))


@pytest.fixture
def hub_dir(tmp_path):
    import datasets

    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
        "images": datasets.List(datasets.Image()),
    })
    good = {"messages": [_msgs(f"Question {i}?", f"Answer {i}.") for i in range(4)], "images": [[_img(i)] for i in range(4)]}
    bad = {"messages": [_msgs("No image?", "None."), _msgs("Two?", "Two."), _msgs("Empty answer?", "  ")],
           "images": [[], [_img(), _img()], [_img()]]}
    (tmp_path / "data").mkdir()
    train = {k: good[k][:3] + bad[k] for k in good}
    datasets.Dataset.from_dict(train, features=features).to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    datasets.Dataset.from_dict({k: good[k][3:] for k in good}, features=features).to_parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet")
    return tmp_path


def test_hub_layout_directory_loads_and_skips_bad_rows_with_a_warning(hub_dir, tmp_path):
    with pytest.warns(UserWarning, match="skipped 3"):
        train, report = load_hub_vsft(hub_dir, split="train", cache_dir=str(tmp_path / "cache"))
    assert len(train) == 3 and report.kept == 3 and report.n_skipped == 3
    assert set(report.skipped) == {"0 images / 1 image parts (need exactly 1)",
                                   "2 images / 1 image parts (need exactly 1)", "empty answer"}
    assert len(report.examples) == 3
    row = train[0]
    assert first_turn(row["messages"]) == ("Question 0?", "Answer 0.")
    assert isinstance(row["images"][0], Image.Image)
    test, test_report = load_hub_vsft(hub_dir, split="test", cache_dir=str(tmp_path / "cache"))
    assert len(test) == 1 and test_report.n_skipped == 0


def test_missing_split_files_raise_value_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="validation"):
        load_hub_vsft(tmp_path, split="validation")


@pytest.fixture
def llava150k(tmp_path):
    images = tmp_path / "coco"
    images.mkdir()
    records = []
    for i in range(12):
        name = f"{i:012d}.jpg"
        if i != 11:  # image 11 is missing on disk
            _img(i * 10).save(images / name)
        records.append({"id": f"{i:012d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
            {"from": "gpt", "value": f"Picture {i} shows a thing."},
            {"from": "human", "value": "Anything else?"},
            {"from": "gpt", "value": "No."}]})
    records[3]["conversations"][1]["value"] = ""  # empty answer
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})
    path = tmp_path / "llava_instruct_150k.json"
    path.write_text(json.dumps(records))
    return path, images


def test_llava_instruct_splits_by_image_and_skips_bad_rows(llava150k):
    path, images = llava150k
    with pytest.warns(UserWarning, match="skipped"):
        train, rep_train = load_llava_instruct(path, images, split="train", test_fraction=0.25, seed=0)
    test, rep_test = load_llava_instruct(path, images, split="test", test_fraction=0.25, seed=0)
    skipped = rep_train.skipped + rep_test.skipped
    assert skipped["empty answer"] == 1 and skipped["no image"] == 1
    assert sum(v for k, v in skipped.items() if k.startswith("missing image file")) == 1
    assert len(train) + len(test) == 12 - 2 and len(test) >= 1
    train_q = {first_turn(r["messages"])[0] for r in train}
    test_q = {first_turn(r["messages"])[0] for r in test}
    assert not train_q & test_q
    row = train[0]
    assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
    assert "<image>" not in row["messages"][0]["content"][1]["text"] and len(row["messages"]) == 4
    assert isinstance(row["images"][0], Image.Image)
    again, _ = load_llava_instruct(path, images, split="test", test_fraction=0.25, seed=0)
    assert [r["messages"] for r in again] == [r["messages"] for r in test]


def test_training_labels_cover_only_answer_tokens(processor):
    rows = [shapes_vqa(4, seed=0, image_size=32)[i] for i in range(4)]
    batch = VQACollator(processor, mode="train")(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = processor.tokenizer
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert (ids == 768).sum(dim=1).tolist() == [16] * 4
    for b, row in enumerate(rows):
        sup = labels[b] != -100
        assert torch.equal(labels[b][sup], ids[b][sup])
        answer = row["messages"][1]["content"][0]["text"]
        assert tok.decode(ids[b][sup]).strip() == answer + "</s>"
        n = int(mask[b].sum())
        assert mask[b, :n].all() and not mask[b, n:].any()  # right padding
        assert (ids[b, n:] == tok.pad_token_id).all() and ids[b, 0] == tok.bos_token_id


def test_generation_batch_is_left_padded_prompts(processor):
    rows = [shapes_vqa(3, seed=1, image_size=32)[i] for i in range(3)]
    batch = VQACollator(processor, mode="generate")(rows)
    assert "labels" not in batch
    mask, ids = batch["attention_mask"], batch["input_ids"]
    for b, row in enumerate(rows):
        n = int(mask[b].sum())
        assert mask[b, -n:].all() and not mask[b, :-n].any()
        text = processor.tokenizer.decode(ids[b, -n:][ids[b, -n:] != 768], skip_special_tokens=True)
        assert text.endswith(row["messages"][0]["content"][1]["text"] + " ASSISTANT:")


def test_collated_batch_runs_through_the_model_with_a_loss(processor):
    model = build_model("test", seed=0)
    rows = [shapes_vqa(2, seed=2, image_size=32)[i] for i in range(2)]
    batch = VQACollator(processor)(rows)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0


def test_collator_rejects_bad_settings(processor):
    with pytest.raises(ValueError, match="decode"):
        VQACollator(processor, mode="decode")
    rows = [shapes_vqa(1, seed=0, image_size=32)[0]]
    with pytest.raises(ValueError, match="max_length 5"):
        VQACollator(processor, max_length=5)(rows)
    rows[0]["images"] = []
    with pytest.raises(ValueError, match="exactly one image"):
        VQACollator(processor)(rows)
