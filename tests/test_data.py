"""Tests of gpslib.data: the real loaders on local stand-ins, chat format, collator."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import N_ROWS, vsft_messages
from gpslib.chat_format import first_turn
from gpslib.data import VQACollator, load_hub_vsft, load_llava_instruct
from gpslib.shapes_vqa import shapes_vqa


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
    good = {"messages": [vsft_messages(f"Question {i}?", f"Answer {i}.") for i in range(4)], "images": [[_img(i)] for i in range(4)]}
    bad = {"messages": [vsft_messages("No image?", "None."), vsft_messages("Two?", "Two."), vsft_messages("Empty answer?", "  ")],
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


def test_training_labels_cover_only_answer_tokens(processor, rows):
    batch = VQACollator(processor, mode="train")(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = processor.tokenizer
    assert batch["pixel_values"].shape == (N_ROWS, 3, 32, 32)
    assert (ids == 768).sum(dim=1).tolist() == [16] * N_ROWS
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


@torch.no_grad()
def test_collated_batch_loss_is_the_cross_entropy_of_the_answer_tokens(processor, plain, rows):
    batch = VQACollator(processor)(rows)
    out = plain(**batch)
    ids, sup = batch["input_ids"], batch["labels"] != -100
    # token t is predicted from position t - 1; only the answer tokens (and </s>) count
    log_p = out.logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T - 1)
    expected = -log_p[sup[:, 1:]].mean()
    assert int(sup.sum()) > N_ROWS  # several answer tokens per row
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)


def test_collator_rejects_bad_settings(processor):
    with pytest.raises(ValueError, match="decode"):
        VQACollator(processor, mode="decode")
    rows = [shapes_vqa(1, seed=0, image_size=32)[0]]
    with pytest.raises(ValueError, match="max_length 5"):
        VQACollator(processor, max_length=5)(rows)
    rows[0]["images"] = []
    with pytest.raises(ValueError, match="exactly one image"):
        VQACollator(processor)(rows)


# --------------------------------------------------------------------------- loaders: bad rows
def _jpeg_bytes(v=0) -> bytes:
    buf = io.BytesIO()
    _img(v).save(buf, "JPEG")
    return buf.getvalue()


def _record(i, image, markers=1):
    return {"id": f"r{i}", "image": image, "conversations": [
        {"from": "human", "value": "<image>\n" * markers + f"What is in picture {i}?"},
        {"from": "gpt", "value": f"Picture {i} shows a thing."}]}


def _llava_dir(tmp_path, records, files=None):
    """A LLaVA-Instruct JSON holding ``records`` and an image folder: every ``r*.jpg`` name in
    the records as a good JPEG unless ``files`` gives its bytes."""
    images = tmp_path / "coco"
    images.mkdir(exist_ok=True)
    files = dict(files or {})
    for r in records:
        name = r.get("image") if isinstance(r, dict) else None
        for n in name if isinstance(name, list) else [name]:
            if isinstance(n, str):
                files.setdefault(n, _jpeg_bytes())
    for name, data in files.items():
        (images / name).write_bytes(data)
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return path, images


def _load_train(path, images, **kw):
    return load_llava_instruct(path, images, split="train", test_fraction=0.0, **kw)


def test_llava_instruct_skips_rows_that_are_not_json_objects(tmp_path):
    path, images = _llava_dir(tmp_path, [_record(0, "r0.jpg"), 42, "row", [1, 2], _record(1, "r1.jpg")])
    with pytest.warns(UserWarning, match="skipped 3"):
        ds, report = _load_train(path, images)
    assert len(ds) == 2 and report.kept == 2
    assert report.skipped == {"row is not a JSON object": 3}
    assert report.examples[0] == ("#1", "row is not a JSON object: int")


def test_llava_instruct_skips_corrupt_and_truncated_images_with_a_count(tmp_path):
    good = _jpeg_bytes(50)
    records = [_record(i, f"r{i}.jpg") for i in range(4)]
    bad = {"r1.jpg": b"not an image", "r2.jpg": good[: len(good) // 2]}
    path, images = _llava_dir(tmp_path, records, files=bad)
    with pytest.warns(UserWarning, match="skipped 2"):
        ds, report = _load_train(path, images)
    assert report.skipped == {"unreadable image": 2} and report.kept == 2
    assert [first_turn(r["messages"])[0] for r in ds] == ["What is in picture 0?", "What is in picture 3?"]
    assert all(r["images"][0].convert("RGB").size == (24, 20) for r in ds)  # every kept image decodes
    assert any("r2.jpg" in detail and "truncated" in detail.lower() for _, detail in report.examples)


def test_llava_instruct_skips_rows_whose_image_markers_do_not_match_their_image(tmp_path):
    records = [_record(0, "r0.jpg"), _record(1, "r1.jpg", markers=2), _record(2, "r2.jpg", markers=0)]
    path, images = _llava_dir(tmp_path, records)
    with pytest.warns(UserWarning, match="skipped 2"):
        ds, report = _load_train(path, images)
    assert len(ds) == 1
    assert report.skipped == {"2 <image> markers for 1 image (need exactly 1)": 1,
                              "0 <image> markers for 1 image (need exactly 1)": 1}


def test_llava_instruct_takes_an_image_list_of_one_and_skips_longer_lists(tmp_path):
    records = [_record(0, ["r0.jpg"]), _record(1, ["r1.jpg", "r2.jpg"]), _record(2, 7)]
    path, images = _llava_dir(tmp_path, records)
    with pytest.warns(UserWarning, match="skipped 2"):
        ds, report = _load_train(path, images)
    assert len(ds) == 1 and ds[0]["images"][0].size == (24, 20)
    assert report.skipped == {"2 images (need exactly 1)": 1, "image is not a file name": 1}


@pytest.mark.parametrize("text, match", [('[{"id": 1,', "not valid JSON"), ('{"id": 1}', "list of conversations")])
def test_llava_instruct_json_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "broken_llava.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_llava_instruct(path, tmp_path)
    assert "broken_llava.json" in str(info.value)


def test_llava_instruct_image_dir_that_is_not_a_directory_is_named(tmp_path):
    path, _ = _llava_dir(tmp_path, [_record(0, "r0.jpg")])
    with pytest.raises(ValueError, match="no_such_dir"):
        load_llava_instruct(path, tmp_path / "no_such_dir")


@pytest.mark.parametrize("max_rows", [-1, 1.5, True, "2"])
def test_max_rows_must_be_none_or_a_non_negative_int(tmp_path, hub_dir, max_rows):
    path, images = _llava_dir(tmp_path, [_record(0, "r0.jpg")])
    with pytest.raises(ValueError, match=f"max_rows .* got {max_rows!r}"):
        load_llava_instruct(path, images, max_rows=max_rows)
    with pytest.raises(ValueError, match=f"max_rows .* got {max_rows!r}"):
        load_hub_vsft(hub_dir, max_rows=max_rows)


def test_max_rows_caps_the_rows_kept(tmp_path):
    path, images = _llava_dir(tmp_path, [_record(i, f"r{i}.jpg") for i in range(3)])
    assert [len(_load_train(path, images, max_rows=n)[0]) for n in (0, 2, np.int64(5), None)] == [0, 2, 3, 3]


def test_hub_loader_skips_rows_whose_image_bytes_do_not_decode(tmp_path):
    import datasets

    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
        "images": datasets.List(datasets.Image()),
    })
    good = _jpeg_bytes(10)
    rows = {"messages": [vsft_messages(f"Question {i}?", f"Answer {i}.") for i in range(4)],
            "images": [[{"bytes": b, "path": None}] for b in (good, b"garbage", good[: len(good) // 2], good)]}
    (tmp_path / "hub" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds, report = load_hub_vsft(tmp_path / "hub", cache_dir=str(tmp_path / "cache"))
    assert report.skipped == {"unreadable image": 2} and report.kept == 2
    assert [first_turn(r["messages"])[0] for r in ds] == ["Question 0?", "Question 3?"]
    assert all(r["images"][0].convert("RGB").size == (24, 20) for r in ds)


# --------------------------------------------------------------------------- collator max_length
def _rows(*questions):
    return [{"messages": vsft_messages(q, "Yes, it is."), "images": [_img()]} for q in questions]


def _answer_starts(processor, rows):
    labels = VQACollator(processor)(rows)["labels"]
    return [int((lab != -100).nonzero()[0]) for lab in labels]


@pytest.mark.parametrize("max_length", [0, -5, 2.5, True, "64"])
def test_max_length_must_be_none_or_a_positive_int(processor, max_length):
    with pytest.raises(ValueError, match=f"max_length must be .* got {max_length!r}"):
        VQACollator(processor, max_length=max_length)


def test_truncation_that_removes_every_answer_token_of_a_row_warns(processor):
    rows = _rows("Red?", "Is the big shape on the left of the picture a red circle?")
    short, long = _answer_starts(processor, rows)
    assert short < long
    with pytest.warns(UserWarning, match=rf"removes every answer token of batch row\(s\) \[1\] .*\[{long}\]"):
        batch = VQACollator(processor, max_length=long)(rows)
    assert (batch["labels"][0] != -100).any() and (batch["labels"][1] == -100).all()


def test_truncation_that_leaves_no_answer_token_in_the_batch_raises(processor):
    rows = _rows("Red?", "Is the big shape on the left of the picture a red circle?")
    short, long = _answer_starts(processor, rows)
    with pytest.raises(ValueError, match=rf"max_length {short} .*rows?\(s\) \[0, 1\].*loss would be NaN"):
        VQACollator(processor, max_length=short)(rows)


def test_generation_prompt_is_never_truncated(processor):
    rows = _rows("Is the big shape on the left of the picture a red circle?")
    n = int(VQACollator(processor, mode="generate")(rows)["attention_mask"].sum())
    with pytest.raises(ValueError, match=f"max_length {n - 1} is shorter than a generation prompt of {n} tokens"):
        VQACollator(processor, mode="generate", max_length=n - 1)(rows)
    ids = VQACollator(processor, mode="generate", max_length=n)(rows)["input_ids"][0]
    assert processor.tokenizer.decode(ids[ids != 768]).endswith("ASSISTANT:")


def test_grounding_tensors_stack_the_maps_and_pad_the_text_with_minus_one(processor, rows):
    collate = VQACollator(processor, "generate", grounding=True)
    maps = [collate.grounding_maps(r) for r in rows]
    n = max(len(g["text_object"]) for g in maps)
    image_object, text_object, assignment = collate.grounding_tensors(rows, n + 2)
    assert image_object.tolist() == [g["image_object"] for g in maps]
    assert assignment.tolist() == [g["assignment"] for g in maps]
    for row, g in zip(text_object.tolist(), maps):
        assert row == g["text_object"] + [-1] * (n + 2 - len(g["text_object"]))
    with pytest.raises(ValueError, match="n_text=1"):
        collate.grounding_tensors(rows, 1)
