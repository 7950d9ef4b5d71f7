"""Invariants of ReorderingLlavaForConditionalGeneration (gpslib.reordering) on the test-size model."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from gpslib.data import VQACollator
from gpslib.model import build_model, build_processor, tiny_llava_config
from gpslib.reordering import ReorderingLlavaForConditionalGeneration, configure_reordering, prompt_segments
from gpslib.shapes import shapes_vqa

torch.set_num_threads(1)
N_ROWS = 4


@pytest.fixture(scope="module")
def processor():
    return build_processor("test")


@pytest.fixture(scope="module")
def plain():
    return build_model("test", seed=0)


@pytest.fixture(scope="module")
def rows():
    ds = shapes_vqa(N_ROWS, seed=0, split="train", image_size=32)
    return [ds[i] for i in range(N_ROWS)]


@pytest.fixture(scope="module")
def train_batch(processor, rows):
    return VQACollator(processor, "train", grounding=True)(rows)


@pytest.fixture(scope="module")
def gen_batch(processor, rows):
    return VQACollator(processor, "generate", grounding=True)(rows)


def make(plain, reorder, **kw):
    config = configure_reordering(tiny_llava_config("test"), reorder=reorder, **kw)
    model = ReorderingLlavaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("reorder_gps.") for k in missing)
    return model.eval()


def _strip(batch, keys=("input_ids", "attention_mask", "pixel_values", "labels", "reorder_assignment")):
    return {k: v for k, v in batch.items() if k in keys}


def _sample(batch, i):
    """Sample i of a batch with its padding removed (left or right)."""
    real = batch["attention_mask"][i].bool()
    out = {}
    for k, v in batch.items():
        out[k] = v[i : i + 1] if v.dim() != 2 or k == "reorder_assignment" else v[i : i + 1, real]
    return out


@torch.no_grad()
def test_none_matches_plain_llava(plain, train_batch):
    batch = _strip(train_batch, ("input_ids", "attention_mask", "pixel_values", "labels"))
    ref = plain(**batch)
    ours = make(plain, "none")(**batch)
    assert torch.equal(ref.logits, ours.logits)
    assert torch.equal(ref.loss, ours.loss)


@torch.no_grad()
def test_unreachable_cosine_threshold_leaves_an_image_first_prompt_unchanged(plain, processor, rows):
    tok = processor.tokenizer
    m = plain.config.image_seq_length
    text = tok(" What colour is the circle? ASSISTANT:", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id] + [plain.config.image_token_id] * m + text])
    pixels = VQACollator(processor, "generate")(rows[:1])["pixel_values"]
    ref = plain(input_ids=ids, pixel_values=pixels).logits
    model = make(plain, "cosine", threshold=1.0)
    r = model.reorder_inputs(ids, pixels)
    assert torch.equal(r.order, torch.arange(ids.shape[1])[None])
    assert torch.allclose(model(input_ids=ids, pixel_values=pixels).logits, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reorder", ["cosine", "oracle", "gps"])
@torch.no_grad()
def test_batched_results_equal_per_sample_results(plain, train_batch, reorder):
    # gps: the soft, noise-free P (a hard permutation may swap near-identical background
    # patches between runs whose logits differ in the last bits; the soft P may not)
    model = make(plain, reorder, threshold=0.0, gps={"noise_scale": 0.0, "hard": False, "sinkhorn_iters": 20})
    if reorder == "gps":
        model.train()
    batch = _strip(train_batch)
    out = model(**batch)
    for i in range(N_ROWS):
        alone = _sample(batch, i)
        logits = model(**alone).logits[0]
        n = logits.shape[0]  # right padding: the real tokens come first
        assert torch.allclose(out.logits[i, :n], logits, atol=1e-5, rtol=0), i


@pytest.mark.parametrize("reorder", ["none", "cosine", "oracle"])
@torch.no_grad()
def test_left_padded_generation_equals_per_sample_generation(plain, gen_batch, reorder):
    model = make(plain, reorder, threshold=0.0)
    batch = _strip(gen_batch)
    new = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert new.shape == (N_ROWS, 6)
    for i in range(N_ROWS):
        alone = model.generate(**_sample(batch, i), max_new_tokens=6, do_sample=False)
        assert torch.equal(new[i], alone[0]), i


@torch.no_grad()
def test_generate_equals_a_step_by_step_greedy_decode_of_forward(plain, gen_batch):
    model = make(plain, "cosine", threshold=0.0)
    sample = _sample(_strip(gen_batch), 1)
    new = model.generate(**sample, max_new_tokens=5, do_sample=False, eos_token_id=None)
    r = model.reorder_inputs(sample["input_ids"], sample["pixel_values"], sample["attention_mask"])
    embeds = r.inputs_embeds
    greedy = []
    for _ in range(5):
        logits = LlavaForConditionalGeneration.forward(model, inputs_embeds=embeds).logits
        token = logits[:, -1].argmax(-1)  # (1,)
        greedy.append(int(token))
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
    assert new[0].tolist() == greedy


@torch.no_grad()
def test_answer_tokens_padding_and_labels_stay_in_place(plain, train_batch):
    model = make(plain, "cosine", threshold=0.0)
    batch = _strip(train_batch)
    r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    fixed = (batch["labels"] != -100) | (batch["attention_mask"] == 0)
    positions = torch.arange(batch["input_ids"].shape[1]).expand_as(r.order)
    assert torch.equal(r.order[fixed], positions[fixed])
    assert torch.equal(r.order[:, 0], torch.zeros(N_ROWS, dtype=torch.long))  # BOS first
    assert torch.equal(r.labels, batch["labels"])
    # what moved with the tokens: the labels and mask read in the order are the same
    assert torch.equal(batch["labels"].gather(1, r.order), r.labels)
    assert torch.equal(batch["attention_mask"].gather(1, r.order), r.attention_mask)
    assert not torch.equal(r.order, torch.arange(r.order.shape[1]).expand_as(r.order))  # something moved
    for row in r.order:
        assert sorted(row.tolist()) == list(range(len(row)))


@torch.no_grad()
def test_reordered_embeddings_are_transformers_merge_read_in_the_order(plain, train_batch):
    model = make(plain, "cosine", threshold=0.0)
    ids, pixels = train_batch["input_ids"], train_batch["pixel_values"]
    r = model.reorder_inputs(ids, pixels, train_batch["attention_mask"], train_batch["labels"])
    embeds = model.get_input_embeddings()(ids)
    features = torch.cat(list(model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output))
    merged = embeds.masked_scatter(model.model.get_placeholder_mask(ids, embeds, features), features)
    assert torch.equal(r.inputs_embeds, merged.gather(1, r.order[..., None].expand(-1, -1, merged.shape[-1])))
    parts = model.prompt_embeddings(ids, pixels, train_batch["attention_mask"], train_batch["labels"])
    assert torch.equal(parts["inputs_embeds"], merged)


@torch.no_grad()
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("batch_name", ["train_batch", "gen_batch"])
def test_compiled_cpu_cosine_path_equals_the_tensor_path(plain, placement, batch_name, request, monkeypatch):
    import gpslib.reordering as reordering

    model = make(plain, "cosine", threshold=0.0, placement=placement)
    batch = request.getfixturevalue(batch_name)
    args = (batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch.get("labels"))
    fused = model.reorder_inputs(*args)
    monkeypatch.setattr(reordering, "_FUSED_CPU", False)
    tensor = model.reorder_inputs(*args)
    assert not torch.equal(fused.order, torch.arange(fused.order.shape[1]).expand_as(fused.order))
    assert torch.equal(fused.order, tensor.order)
    assert torch.equal(fused.inputs_embeds, tensor.inputs_embeds)
    for name, value in tensor.segments.items():
        assert torch.equal(fused.segments[name], value), name
    assert (fused.position_ids is None) == (tensor.position_ids is None)


def test_compiled_cosine_path_gives_the_tensor_paths_gradients(plain, train_batch, monkeypatch):
    import gpslib.reordering as reordering

    grads = []
    for fused in (True, False):
        monkeypatch.setattr(reordering, "_FUSED_CPU", fused)
        model = make(plain, "cosine", threshold=0.0).train()
        model(**_strip(train_batch)).loss.backward()
        grads.append(model.model.multi_modal_projector.linear_2.weight.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_images_that_do_not_match_the_placeholders_raise_a_clear_error(plain, train_batch):
    model = make(plain, "cosine")
    with pytest.raises(ValueError, match=r"image features and image tokens do not match.*\d+ <image> tokens"):
        model(input_ids=train_batch["input_ids"], pixel_values=train_batch["pixel_values"][:-1],
              attention_mask=train_batch["attention_mask"])


@torch.no_grad()
def test_oracle_puts_each_objects_patches_right_before_its_word(plain, gen_batch):
    model = make(plain, "oracle")
    batch = _strip(gen_batch)
    r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], None,
                             batch["reorder_assignment"])
    seg = r.segments
    for b in range(N_ROWS):
        assignment = batch["reorder_assignment"][b]
        new_position = torch.empty_like(r.order[b])
        new_position[r.order[b]] = torch.arange(r.order.shape[1])
        for word in assignment[assignment >= 0].unique().tolist():
            patches = seg["image_pos"][b][assignment == word]
            word_pos = new_position[seg["text_pos"][b][word]]
            assert sorted(new_position[patches].tolist()) == list(range(word_pos - len(patches), word_pos))


def test_gps_gradients_reach_the_projector_and_every_sinkformer_parameter(plain, train_batch):
    model = make(plain, "gps", gps={"num_layers": 2, "sinkhorn_iters": 10, "hard": True})
    model.train()
    torch.manual_seed(0)
    out = model(**_strip(train_batch))
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    for name, p in model.reorder_gps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@torch.no_grad()
def test_gps_inference_is_a_deterministic_permutation(plain, gen_batch):
    model = make(plain, "gps", gps={"num_layers": 2, "sinkhorn_iters": 20})
    batch = _strip(gen_batch)
    a = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    b = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    assert torch.equal(a.order, b.order)
    for row in a.order:
        assert sorted(row.tolist()) == list(range(len(row)))
    assert torch.equal(a.inputs_embeds, b.inputs_embeds)


def test_settings_survive_save_and_load(plain, tmp_path, train_batch):
    model = make(plain, "gps", placement="after", gps={"num_layers": 2, "alpha": 0.25})
    model.save_pretrained(tmp_path)
    loaded = ReorderingLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.reorder == "gps" and loaded.config.reorder_placement == "after"
    assert loaded.config.reorder_gps["alpha"] == 0.25 and loaded.config.reorder_threshold == 0.1
    for (name, p), (_, q) in zip(model.reorder_gps.named_parameters(), loaded.reorder_gps.named_parameters()):
        assert torch.equal(p, q), name


def test_absent_settings_mean_none():
    config = configure_reordering(tiny_llava_config("test"))
    assert config.reorder == "none"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reorder": "random"}, r"'none', 'cosine', 'gps', 'oracle'.*'random'"),
        ({"threshold": 2.0}, "reorder_threshold=2.0"),
        ({"placement": "middle"}, "'middle'"),
        ({"gps": {"layers": 3}}, "'layers'"),
        ({"gps": {"tau": 0.0}}, "tau=0.0"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        configure_reordering(tiny_llava_config("test"), **kwargs)


@torch.no_grad()
def test_prompt_without_image_placeholder_raises_a_clear_error(plain, processor):
    ids = processor.tokenizer("USER: hello ASSISTANT:", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="no image placeholder"):
        prompt_segments(ids, None, None, plain.config.image_token_id, 1)


@torch.no_grad()
def test_oracle_without_assignment_raises(plain, gen_batch):
    model = make(plain, "oracle")
    batch = _strip(gen_batch, ("input_ids", "attention_mask", "pixel_values"))
    with pytest.raises(ValueError, match="reorder_assignment"):
        model(**batch)


def test_load_model_turns_a_plain_checkpoint_into_a_reordering_model(plain, processor, tmp_path):
    from gpslib.model import ReorderingLlavaForConditionalGeneration as Exported
    from gpslib.model import load_model

    assert Exported is ReorderingLlavaForConditionalGeneration
    plain.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, reorder="cosine", threshold=0.2)
    assert isinstance(model, ReorderingLlavaForConditionalGeneration)
    assert model.config.reorder == "cosine" and model.config.reorder_threshold == 0.2
    for (name, p), (_, q) in zip(plain.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), name
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    again, _ = load_model(tmp_path / "again")
    assert isinstance(again, ReorderingLlavaForConditionalGeneration) and again.config.reorder == "cosine"


@torch.no_grad()
def test_validation_loss_of_a_reordering_model_is_its_training_loss(plain, train_batch):
    from gpslib.metrics import validation_loss

    model = make(plain, "cosine", threshold=0.0)
    batch = _strip(train_batch)
    assert validation_loss(model, [batch]) == pytest.approx(float(model(**batch).loss), rel=1e-6)
