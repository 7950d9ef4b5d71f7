"""Invariants of ReorderingLlavaForConditionalGeneration (gpslib.reordering) on the test-size model."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration, pipeline

from conftest import N_ROWS, PLAIN_INPUTS, strip
from gpslib.chat_format import assistant_separator_ids, format_prompt
from gpslib.data import VQACollator
from gpslib.model import build_model, build_processor, load_model
from gpslib.reordering import ReorderingLlavaForConditionalGeneration
from gpslib.reordering_config import ReorderingLlavaConfig

STRATEGIES = ["none", "cosine", "oracle", "gps", "random"]


def _sample(batch, i):
    """Sample i of a batch with its padding removed (left or right)."""
    real = batch["attention_mask"][i].bool()
    out = {}
    for k, v in batch.items():
        out[k] = v[i : i + 1] if v.dim() != 2 or k == "reorder_assignment" else v[i : i + 1, real]
    return out


def _new_position(order_row):
    position = torch.empty_like(order_row)
    position[order_row] = torch.arange(order_row.numel())
    return position


# ---------------------------------------------------------------------------- plain LLaVA and the seam
@torch.no_grad()
def test_none_matches_plain_llava(plain, reordering_model, train_batch, gen_batch):
    batch = strip(train_batch, PLAIN_INPUTS)
    ref, ours = plain(**batch), reordering_model("none")(**batch)
    assert torch.equal(ref.logits, ours.logits) and torch.equal(ref.loss, ours.loss)
    gen = strip(gen_batch, PLAIN_INPUTS)
    assert torch.equal(plain.generate(**gen, max_new_tokens=4, do_sample=False),
                       reordering_model("none").generate(**gen, max_new_tokens=4, do_sample=False))


@torch.no_grad()
def test_reordered_embeddings_are_transformers_merge_read_in_the_order(reordering_model, train_batch):
    model = reordering_model("cosine", threshold=0.0)
    ids, pixels = train_batch["input_ids"], train_batch["pixel_values"]
    r = model.reorder_inputs(ids, pixels, train_batch["attention_mask"], train_batch["labels"])
    embeds = model.get_input_embeddings()(ids)
    features = torch.cat(list(model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output))
    merged = embeds.masked_scatter(model.model.get_placeholder_mask(ids, embeds, features), features)
    assert torch.equal(r.inputs_embeds, merged.gather(1, r.order[..., None].expand(-1, -1, merged.shape[-1])))
    parts = model.prompt_embeddings(ids, pixels, train_batch["attention_mask"], train_batch["labels"])
    assert torch.equal(parts["inputs_embeds"], merged)


@torch.no_grad()
def test_unreachable_cosine_threshold_leaves_an_image_first_prompt_and_its_logits_unchanged(
        plain, reordering_model, processor, gen_batch):
    # Algorithm 1 puts unmatched image tokens right before all text tokens (after BOS), so a
    # prompt that starts with its image is left as it is when nothing reaches the threshold
    tok = processor.tokenizer
    model = reordering_model("cosine", threshold=1.0)
    text = tok(" What colour is the circle? ASSISTANT:", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id] + [model.config.image_token_id] * model.config.image_seq_length + text])
    pixels = gen_batch["pixel_values"][:1]
    r = model.reorder_inputs(ids, pixels)
    assert torch.equal(r.order, torch.arange(ids.shape[1])[None])
    assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits, plain(input_ids=ids, pixel_values=pixels).logits)


@pytest.mark.parametrize("reorder", ["cosine", "oracle", "gps", "random"])
@torch.no_grad()
def test_batched_results_equal_per_sample_results(reordering_model, train_batch, reorder):
    # gps: the soft, noise-free P (a hard permutation may swap near-identical background
    # patches between runs whose logits differ in the last bits; the soft P may not)
    model = reordering_model(reorder, threshold=0.0, gps={"noise_scale": 0.0, "sinkhorn_iters": 20})
    if reorder == "gps":
        model.train()
    batch = strip(train_batch)
    out = model(**batch)
    for i in range(N_ROWS):
        logits = model(**_sample(batch, i)).logits[0]
        n = logits.shape[0]  # right padding: the real tokens come first
        assert torch.allclose(out.logits[i, :n], logits, atol=1e-5, rtol=0), i


@torch.no_grad()
def test_answer_tokens_padding_and_labels_stay_in_place(reordering_model, train_batch):
    model = reordering_model("cosine", threshold=0.0)
    batch = strip(train_batch)
    r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    fixed = (batch["labels"] != -100) | (batch["attention_mask"] == 0)
    positions = torch.arange(batch["input_ids"].shape[1]).expand_as(r.order)
    assert torch.equal(r.order[fixed], positions[fixed])
    assert torch.equal(r.order[:, 0], torch.zeros(N_ROWS, dtype=torch.long))  # BOS first
    assert torch.equal(r.labels, batch["labels"])
    assert torch.equal(batch["attention_mask"].gather(1, r.order), r.attention_mask)
    assert not torch.equal(r.order, positions)  # something moved
    for row in r.order:
        assert sorted(row.tolist()) == list(range(len(row)))


def test_images_that_do_not_match_the_placeholders_raise_a_clear_error(reordering_model, train_batch):
    model = reordering_model("cosine")
    with pytest.raises(ValueError, match=r"image features and image tokens do not match.*\d+ <image> tokens"):
        model(input_ids=train_batch["input_ids"], pixel_values=train_batch["pixel_values"][:-1],
              attention_mask=train_batch["attention_mask"])


@torch.no_grad()
def test_oracle_puts_each_objects_patches_right_before_its_word(reordering_model, gen_batch):
    model = reordering_model("oracle")
    batch = strip(gen_batch)
    r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], None,
                             batch["reorder_assignment"])
    for b in range(N_ROWS):
        assignment = batch["reorder_assignment"][b]
        new_position = _new_position(r.order[b])
        for word in assignment[assignment >= 0].unique().tolist():
            patches = r.layout.image_pos[b][assignment == word]
            word_pos = new_position[r.layout.text_pos[b][word]]
            assert sorted(new_position[patches].tolist()) == list(range(word_pos - len(patches), word_pos))


@torch.no_grad()
def test_random_moves_as_many_image_tokens_as_cosine_but_not_the_same_ones(reordering_model, gen_batch):
    batch = strip(gen_batch, PLAIN_INPUTS)
    image = batch["input_ids"] == reordering_model("none").config.image_token_id
    first = batch["attention_mask"].argmax(1)  # BOS; unmatched image tokens follow it

    def moved(reorder):  # "after": the unmatched image tokens are exactly the run right after BOS
        r = reordering_model(reorder, threshold=0.1, placement="after").reorder_inputs(**batch)
        new_image = image.gather(1, r.order).long()
        run = torch.tensor([int(new_image[b, first[b] + 1:].cumprod(0).sum()) for b in range(N_ROWS)])
        return r.order, image.sum(1) - run

    (cosine, n_cosine), (random, n_random), (again, _) = moved("cosine"), moved("random"), moved("random")
    assert torch.equal(random, again)  # drawn from the prompt's tokens, not from a global generator
    assert torch.equal(n_random, n_cosine) and n_cosine.sum() > 0
    assert not torch.equal(random, cosine)


def test_oracle_without_assignment_raises(reordering_model, gen_batch):
    with pytest.raises(ValueError, match="reorder_assignment"):
        reordering_model("oracle")(**strip(gen_batch, PLAIN_INPUTS))


def test_validation_loss_of_a_reordering_model_is_its_training_loss(reordering_model, train_batch):
    from gpslib.metrics import validation_loss

    model = reordering_model("cosine", threshold=0.0)
    batch = strip(train_batch)
    with torch.no_grad():
        assert validation_loss(model, [batch]) == pytest.approx(float(model(**batch).loss), rel=1e-6)


# ---------------------------------------------------------------------------- GPS
def test_gps_gradients_reach_the_projector_and_every_sinkformer_parameter(reordering_model, train_batch):
    model = reordering_model("gps", gps={"num_layers": 2, "sinkhorn_iters": 10}).train()
    model.gps_hard = True
    torch.manual_seed(0)
    model(**strip(train_batch)).loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    for name, p in model.reorder_gps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@torch.no_grad()
def test_gps_inference_is_a_deterministic_permutation(reordering_model, gen_batch):
    model = reordering_model("gps", gps={"num_layers": 2, "sinkhorn_iters": 20})
    batch = strip(gen_batch)
    a = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    b = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    assert torch.equal(a.order, b.order) and torch.equal(a.inputs_embeds, b.inputs_embeds)
    for row in a.order:
        assert sorted(row.tolist()) == list(range(len(row)))


@torch.no_grad()
def test_gps_orders_a_prompt_whose_only_text_is_the_separator_and_generates_from_that_order(
        reordering_model, processor, gen_batch):
    # alpha < 0 keeps the Hungarian permutation off the identity, so the order really moves tokens
    model = reordering_model("gps", gps={"num_layers": 2, "sinkhorn_iters": 10, "alpha": -5.0})
    m = model.config.image_seq_length
    separator = model.config.assistant_separator_ids
    ids = torch.tensor([[processor.tokenizer.bos_token_id] + [model.config.image_token_id] * m + separator])
    pixels = gen_batch["pixel_values"][:1]
    r = model.reorder_inputs(ids, pixels)
    assert r.layout.n_text.tolist() == [len(separator)]  # no question words: the separator is all the text
    assert r.order[0, 0] == 0 and sorted(r.order[0].tolist()) == list(range(ids.shape[1]))  # BOS first
    assert not torch.equal(r.order[0], torch.arange(ids.shape[1]))
    out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)
    # the first step scores the reordered prompt
    logits = LlavaForConditionalGeneration.forward(model, inputs_embeds=r.inputs_embeds,
                                                   position_ids=r.position_ids).logits
    torch.testing.assert_close(out.scores[0][0], logits[0, -1], atol=1e-5, rtol=0)


def test_switching_strategy_after_construction_is_checked(reordering_model, train_batch):
    model = reordering_model("cosine")
    with pytest.raises(ValueError, match="'shuffle'"):
        model.config.reorder = "shuffle"
    model.config.reorder = "gps"
    with pytest.raises(ValueError, match="without a Sinkformer"):
        model(**strip(train_batch))


# ---------------------------------------------------------------------------- generate: transformers' conventions
@pytest.mark.parametrize("reorder", STRATEGIES)
@torch.no_grad()
def test_generate_returns_the_prompt_then_the_new_tokens_like_plain_llava(plain, reordering_model, gen_batch, reorder):
    model = reordering_model(reorder, threshold=0.0)
    batch = strip(gen_batch)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    t = batch["input_ids"].shape[1]
    assert out.shape == (N_ROWS, t + 5) and torch.equal(out[:, :t], batch["input_ids"])
    ref = plain.generate(**strip(gen_batch, PLAIN_INPUTS), max_new_tokens=5,
                         do_sample=False)
    assert ref.shape == out.shape and torch.equal(ref[:, :t], out[:, :t])


@pytest.mark.parametrize("reorder", STRATEGIES)
@torch.no_grad()
def test_generate_options_work_for_every_strategy(reordering_model, gen_batch, reorder):
    model = reordering_model(reorder, threshold=0.0)
    batch = strip(gen_batch)
    t = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (N_ROWS, t + 3) and len(out.scores) == 3
    greedy = torch.stack([step.argmax(-1) for step in out.scores], dim=1)  # (B, 3): what the scores pick
    assert torch.equal(out.sequences[:, t:], greedy)
    assert torch.equal(out.sequences, model.generate(**batch, max_new_tokens=3, do_sample=False))
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=3, do_sample=True, top_k=5)
    assert sampled.shape == (N_ROWS, t + 3)
    beams = model.generate(**batch, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert beams.shape == (2 * N_ROWS, t + 3)
    assert torch.equal(beams[::2, :t], batch["input_ids"])


@torch.no_grad()
def test_logits_processors_see_the_prompt_as_in_plain_llava(plain, reordering_model, processor, gen_batch):
    # An image-first prompt that cosine at threshold 1.0 leaves as it is: the logits equal plain
    # Llava's, so the processed scores must too. A repetition penalty and an n-gram ban act on the
    # prompt's ids; had generate started its sequences without them, the scores would differ.
    model = reordering_model("cosine", threshold=1.0)
    tok = processor.tokenizer
    text = tok(" What colour is the circle? ASSISTANT:", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id] + [model.config.image_token_id] * model.config.image_seq_length + text])
    inputs = {"input_ids": ids, "pixel_values": gen_batch["pixel_values"][:1]}
    for options in ({"repetition_penalty": 50.0}, {"no_repeat_ngram_size": 1}):
        kw = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_scores=True, **options)
        ours, theirs = model.generate(**inputs, **kw), plain.generate(**inputs, **kw)
        assert torch.equal(ours.sequences, theirs.sequences), options
        for step, (a, b) in enumerate(zip(ours.scores, theirs.scores)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=f"{options} step {step}")


@pytest.mark.parametrize("reorder", ["none", "cosine", "oracle"])
@torch.no_grad()
def test_left_padded_generation_equals_per_sample_generation(reordering_model, gen_batch, reorder):
    model = reordering_model(reorder, threshold=0.0, position_gap=7)
    batch = strip(gen_batch)
    t = batch["input_ids"].shape[1]
    new = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, t:]
    for i in range(N_ROWS):
        alone = _sample(batch, i)
        out = model.generate(**alone, max_new_tokens=6, do_sample=False)
        assert torch.equal(new[i], out[0, alone["input_ids"].shape[1]:]), i


@pytest.mark.parametrize("settings", [{"reorder": "cosine", "threshold": 0.0}, {"reorder": "none", "position_gap": 300},
                                      {"reorder": "oracle", "position_gap": 40, "position_scheme": "v2pe"},
                                      {"reorder": "none", "position_scheme": "cca", "position_gap": 5}])
@torch.no_grad()
def test_generate_equals_a_step_by_step_greedy_decode_of_forward(reordering_model, gen_batch, settings):
    model = reordering_model(**settings)
    sample = _sample(strip(gen_batch), 1)
    t = sample["input_ids"].shape[1]
    new = model.generate(**sample, max_new_tokens=5, do_sample=False, eos_token_id=None)[0, t:]
    r = model.reorder_inputs(sample["input_ids"], sample["pixel_values"], sample["attention_mask"], None,
                             sample.get("reorder_assignment"))
    embeds, positions = r.inputs_embeds, r.position_ids
    greedy = []
    for _ in range(5):
        logits = LlavaForConditionalGeneration.forward(model, inputs_embeds=embeds, position_ids=positions,
                                                       attention_mask=torch.ones(embeds.shape[:2])).logits
        token = logits[:, -1].argmax(-1)  # (1,)
        greedy.append(int(token))
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    assert new.tolist() == greedy


def test_the_image_text_to_text_pipeline_answers_what_the_models_generate_answers(
        reordering_model, processor, rows):
    model = reordering_model("cosine", threshold=0.0)
    image, prompt = rows[0]["images"][0], format_prompt("What colour is the circle?")
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    out = pipe(images=image, text=prompt, generate_kwargs={"max_new_tokens": 4, "do_sample": False},
               return_full_text=False)
    enc = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**enc, max_new_tokens=4, do_sample=False)[0, enc["input_ids"].shape[1]:]
    expected = processor.tokenizer.decode(new, skip_special_tokens=True)
    assert expected.strip() and out[0]["generated_text"] == expected


# ---------------------------------------------------------------------------- the end of the prompt
def _trl_labels(batch):
    """Labels as TRL's DataCollatorForVisionLanguageModeling writes them for conversational data:
    ``input_ids`` with only the padding set to -100 (its vision tokens "are left unchanged")."""
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


@torch.no_grad()
def test_trl_style_labels_reorder_exactly_like_gpslib_collator_labels(reordering_model, train_batch):
    model = reordering_model("cosine", threshold=0.0)
    batch = strip(train_batch)
    trl = _trl_labels(batch)
    image = batch["input_ids"] == model.config.image_token_id
    assert bool((trl[image] == model.config.image_token_id).all())  # TRL leaves the image ids as labels
    ours = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    theirs = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], trl)
    assert torch.equal(ours.order, theirs.order) and torch.equal(ours.inputs_embeds, theirs.inputs_embeds)
    # text labels move with their tokens; the image tokens' copies of their ids are ignored
    assert torch.equal(theirs.labels, trl.masked_fill(image, -100).gather(1, theirs.order))
    moved = (ours.order != torch.arange(ours.order.shape[1])).sum()
    assert moved > 0


@pytest.mark.parametrize("reorder", ["none", "cosine"])
@torch.no_grad()
def test_image_token_ids_as_labels_are_ignored_under_every_strategy(reordering_model, train_batch, reorder):
    model = reordering_model(reorder, threshold=0.0)
    batch = strip(train_batch)
    trl = _trl_labels(batch)
    masked = trl.masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    loss_trl, loss_masked = model(**dict(batch, labels=trl)).loss, model(**dict(batch, labels=masked)).loss
    assert torch.equal(loss_trl, loss_masked)
    assert not torch.equal(loss_masked, model(**batch).loss)  # the prompt's text labels do count


def test_labels_that_cover_image_tokens_raise_value_error(reordering_model, train_batch):
    model = reordering_model("cosine")
    batch = strip(train_batch)
    image = batch["input_ids"] == model.config.image_token_id
    labels = _trl_labels(batch).masked_fill(image, 5)  # image tokens trained towards a word
    with pytest.raises(ValueError, match="cover image tokens with targets \\[5\\]"):
        model(**dict(batch, labels=labels))


def test_prompts_without_image_or_separator_raise_value_errors(reordering_model, processor, gen_batch):
    model = reordering_model("cosine")
    ids = processor.tokenizer(format_prompt("hello").replace("<image>\n", ""), return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="no image token"):
        model.prompt_layout(ids)
    no_separator = gen_batch["input_ids"][:1, :-2]
    with pytest.raises(ValueError, match="no assistant separator"):
        model.prompt_layout(no_separator)


# ---------------------------------------------------------------------------- config, save and load, Auto classes
def test_settings_survive_save_and_load_through_the_auto_classes(reordering_model, processor, tmp_path):
    model = reordering_model("gps", placement="after", position_gap=64, position_scheme="v2pe", v2pe_delta=0.5,
                             gps={"num_layers": 2, "alpha": 0.25})
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is ReorderingLlavaForConditionalGeneration
    c = loaded.config
    assert (c.reorder, c.placement, c.threshold, c.position_gap, c.position_scheme, c.v2pe_delta) == (
        "gps", "after", 0.1, 64, "v2pe", 0.5)
    assert c.gps["alpha"] == 0.25 and c.assistant_separator_ids == model.config.assistant_separator_ids
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name


def test_from_pretrained_takes_settings_as_keywords_on_a_plain_checkpoint(plain, processor, tmp_path):
    plain.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = ReorderingLlavaForConditionalGeneration.from_pretrained(tmp_path, reorder="cosine", threshold=0.2)
    assert model.config.reorder == "cosine" and model.config.threshold == 0.2
    assert model.config.assistant_separator_ids == assistant_separator_ids(processor.tokenizer)
    for (name, p), (_, q) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(p, q), name


def test_a_plain_checkpoint_of_the_papers_geometry_loads_and_reorders(tmp_path):
    mirror, processor = build_model("mirror", seed=0), build_processor("mirror")
    mirror.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = ReorderingLlavaForConditionalGeneration.from_pretrained(tmp_path, reorder="cosine", threshold=-1.0).eval()
    assert model.config.image_seq_length == 576
    from gpslib.shapes_vqa import make_sample

    row = make_sample(0, image_size=336)
    batch = VQACollator(processor, "generate")([row])
    with torch.no_grad():
        r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    assert r.layout.image_pos.shape == (1, 576)
    assert (r.order != torch.arange(r.order.shape[1])).any()  # threshold -1: every image token moves


def test_load_model_turns_a_plain_checkpoint_into_a_reordering_model(plain, processor, tmp_path):
    plain.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, reorder="cosine", threshold=0.2)
    assert isinstance(model, ReorderingLlavaForConditionalGeneration)
    assert model.config.reorder == "cosine" and model.config.threshold == 0.2
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    again, _ = load_model(tmp_path / "again")
    assert isinstance(again, ReorderingLlavaForConditionalGeneration) and again.config.reorder == "cosine"


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"reorder": "shuffle"}, r"'none', 'cosine', 'gps', 'oracle', 'random'.*'shuffle'"),
        ({"threshold": 2.0}, "threshold=2.0"),
        ({"placement": "middle"}, "'middle'"),
        ({"gps": {"layers": 3}}, "'layers'"),
        ({"gps": {"tau_end": 0.0}}, "tau_end=0.0"),
        ({"position_gap": -1}, "position_gap=-1"),
        ({"position_gap": 2.5}, "position_gap=2.5"),
        ({"position_scheme": "spiral"}, "'spiral'"),
        ({"v2pe_delta": 0.0}, "v2pe_delta=0.0"),
        ({"v2pe_delta": 1.0}, "v2pe_delta=1.0"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value(plain, settings, match):
    with pytest.raises(ValueError, match=match):
        ReorderingLlavaConfig(**plain.config.to_dict() | settings)
    config = ReorderingLlavaConfig(**plain.config.to_dict())
    name, value = next(iter(settings.items()))
    with pytest.raises(ValueError, match=match):
        setattr(config, name, value)


def test_a_plain_config_means_no_reordering(plain):
    model = ReorderingLlavaForConditionalGeneration(plain.config)
    assert model.config.reorder == "none" and model.config.position_gap == 0
