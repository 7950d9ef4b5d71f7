"""Tests of gpslib.model: configs, factories, save/load and the hub-id loading path."""

from __future__ import annotations

import json


import pytest
import torch

from gpslib.model import MODEL_SIZES, build_model, build_processor, fix_processor, load_model, tiny_llava_config
from gpslib.shapes_vqa import make_sample


def _inputs(processor, size):
    row = make_sample(0, seed=0, image_size=MODEL_SIZES[size]["image_size"])
    text = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
    return processor(images=row["images"], text=[text], return_tensors="pt")


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_configs_have_the_real_architecture(size):
    c = tiny_llava_config(size)
    assert c.vision_config.model_type == "clip_vision_model" and c.text_config.model_type == "llama"
    assert c.vision_feature_layer == -2 and c.vision_feature_select_strategy == "default"
    assert c.projector_hidden_act == "gelu"
    t = c.text_config
    assert t.num_key_value_heads < t.num_attention_heads  # grouped-query attention
    assert (t.bos_token_id, t.eos_token_id) == (1, 2)
    assert t.vocab_size % 64 == 0 and t.vocab_size >= c.image_token_index + 2


def test_mirror_has_the_real_token_ids_and_576_image_tokens():
    c = tiny_llava_config("mirror")
    assert c.text_config.vocab_size == 32064
    assert (c.image_token_index, c.text_config.pad_token_id) == (32000, 32001)
    assert (c.vision_config.image_size, c.vision_config.patch_size, c.image_seq_length) == (336, 14, 576)


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_image_placeholder_expands_to_vision_token_count(size):
    model, processor = build_model(size), build_processor(size)
    enc = _inputs(processor, size)
    n_placeholders = int((enc.input_ids == model.config.image_token_index).sum())
    with torch.no_grad():
        feats = model.get_image_features(enc.pixel_values, vision_feature_layer=-2,
                                         vision_feature_select_strategy="default").pooler_output[0]
        logits = model(**enc).logits  # the model itself checks placeholders == features
    assert n_placeholders == feats.shape[0] == tiny_llava_config(size).image_seq_length
    assert logits.shape == (*enc.input_ids.shape, model.config.text_config.vocab_size)
    if size == "mirror":
        assert n_placeholders == 576


def test_build_model_is_deterministic_in_seed():
    a, b, c = build_model("test", seed=1), build_model("test", seed=1), build_model("test", seed=2)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_save_and_load_round_trip_keeps_logits_and_processor(tmp_path, processor):
    model = build_model("test", seed=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_proc = load_model(tmp_path)
    enc, enc2 = _inputs(processor, "test"), _inputs(loaded_proc, "test")
    assert torch.equal(enc.input_ids, enc2.input_ids) and torch.equal(enc.pixel_values, enc2.pixel_values)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, loaded(**enc2).logits, rtol=0, atol=1e-6)
    assert loaded_proc.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [768, 769]


def test_mirror_loads_through_load_model_as_a_hub_id(tmp_path):
    """A fake Hugging Face cache holding the mirror, with the hub's pre-5.x processor
    settings missing, resolves by repo id offline, and load_model restores 576 tokens."""
    repo, commit = "gpslib-test/tiny-llava-mirror", "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / "models--gpslib-test--tiny-llava-mirror"
    snapshot = root / "snapshots" / commit
    model, processor = build_model("mirror", seed=0), build_processor("mirror")
    model.save_pretrained(snapshot)
    processor.save_pretrained(snapshot)
    cfg_path = snapshot / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)

    loaded, loaded_proc = load_model(repo, cache_dir=tmp_path / "hub")
    assert loaded_proc.patch_size == 14 and loaded_proc.vision_feature_select_strategy == "default"
    enc = _inputs(loaded_proc, "mirror")
    assert int((enc.input_ids == 32000).sum()) == 576
    with torch.no_grad():
        assert loaded(**enc).logits.shape[-1] == 32064


def test_bad_names_and_mismatched_processor_raise_value_errors():
    with pytest.raises(ValueError, match="huge"):
        tiny_llava_config("huge")
    processor = build_processor("test")
    processor.patch_size = 4  # 64 tokens for a tower that yields 16
    with pytest.raises(ValueError, match="64"):
        fix_processor(processor, tiny_llava_config("test"))
