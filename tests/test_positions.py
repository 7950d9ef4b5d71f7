"""Properties of gpslib.positions and of the position settings inside the model (issue: does distance matter?)."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from conftest import PLAIN_INPUTS, strip
from gpslib.positions import concentric_rings, leading_block, position_ids


def _oracle_inputs(model, train_batch):
    """The oracle-reordered training batch: (the batch, ReorderedInputs)."""
    batch = strip(train_batch)
    return batch, model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                       batch["labels"], batch["reorder_assignment"])


def test_rings_are_concentric_with_the_centre_innermost():
    assert concentric_rings(4).view(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    rings = concentric_rings(24).view(24, 24)
    assert int(rings.max()) == 11 and rings[11, 11] == 11 and rings[0].eq(0).all()  # CCA's 12 rings


def test_leading_block_is_the_first_run_of_image_tokens():
    is_image = torch.tensor([[0, 0, 1, 1, 0, 1, 0], [0, 1, 1, 1, 1, 0, 0]]).bool()
    mask = torch.tensor([[1] * 7, [0, 1, 1, 1, 1, 1, 1]])
    assert leading_block(is_image, mask).long().tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0]]


def test_schemes_give_the_positions_written_in_the_module_docstring():
    # BOS USER : img x 4 \n q ASSISTANT :  (a 2 x 2 grid)
    is_image = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]]).bool()
    patch = torch.tensor([[-1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1]])
    mask = torch.ones_like(patch)
    assert position_ids(is_image, patch, mask).tolist() == [list(range(11))]
    assert position_ids(is_image, patch, mask, gap=10).tolist() == [list(range(7)) + list(range(17, 21))]
    assert position_ids(is_image, patch, mask, scheme="v2pe", delta=0.5).tolist() == [
        [0, 1, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8]]
    # cca: one ring (2 x 2): every patch at the block's first position, text right after
    assert position_ids(is_image, patch, mask, gap=3, scheme="cca").tolist() == [[0, 1, 2, 3, 3, 3, 3, 7, 8, 9, 10]]


def test_cca_puts_the_centre_of_a_4x4_grid_nearest_the_text():
    is_image = torch.tensor([[0] + [1] * 16 + [0, 0]]).bool()
    patch = torch.tensor([[-1] + list(range(16)) + [-1, -1]])
    pos = position_ids(is_image, patch, torch.ones_like(patch), scheme="cca")[0]
    rings = concentric_rings(4)
    assert pos[1:17].tolist() == (1 + rings).tolist() and pos[17:].tolist() == [3, 4]


def test_left_padding_gets_transformers_positions():
    is_image = torch.tensor([[0, 0, 0, 1, 1, 0]]).bool()
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    pos = position_ids(is_image, torch.full((1, 6), -1), mask)
    assert pos.tolist() == ((mask.cumsum(1) - 1).clamp_min(0)).tolist()


@pytest.mark.parametrize("kwargs, match", [({"gap": -1}, "gap=-1"), ({"scheme": "spiral"}, "'spiral'"),
                                           ({"scheme": "v2pe", "delta": 1.0}, "delta=1.0")])
def test_bad_values_raise_value_error_naming_them(kwargs, match):
    is_image = torch.tensor([[0, 1, 0]]).bool()
    with pytest.raises(ValueError, match=match):
        position_ids(is_image, torch.tensor([[-1, 0, -1]]), torch.ones(1, 3), **kwargs)


# ---------------------------------------------------------------------------- inside the model
@torch.no_grad()
def test_no_gap_sequential_positions_give_transformers_default_logits_bit_for_bit(reordering_model, train_batch):
    model = reordering_model("cosine", threshold=0.0)
    batch = strip(train_batch, PLAIN_INPUTS)
    r = model.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    default = LlavaForConditionalGeneration.forward(model, inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask)
    assert torch.equal(model(**batch).logits, default.logits)


@torch.no_grad()
def test_adding_a_constant_to_every_position_leaves_the_logits_unchanged(reordering_model, train_batch):
    model = reordering_model("oracle", position_gap=50)
    _, r = _oracle_inputs(model, train_batch)
    a = LlavaForConditionalGeneration.forward(model, inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask,
                                              position_ids=r.position_ids).logits
    b = LlavaForConditionalGeneration.forward(model, inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask,
                                              position_ids=r.position_ids + 37).logits
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_a_gap_equals_plain_llava_with_the_equivalent_explicit_positions(plain, reordering_model, train_batch):
    gap = 300
    batch = strip(train_batch, PLAIN_INPUTS)
    image = batch["input_ids"] == plain.config.image_token_id
    after_image = image.long().cumsum(1).bool() & ~image  # from the first token after the image on
    explicit = torch.arange(batch["input_ids"].shape[1]).expand_as(image) + gap * after_image
    ref = plain(**batch, position_ids=explicit)
    ours = reordering_model("none", position_gap=gap)(**batch)
    torch.testing.assert_close(ours.logits, ref.logits, atol=0, rtol=0)
    assert not torch.allclose(ours.logits, plain(**batch).logits, atol=1e-4)  # the gap changed something


@torch.no_grad()
def test_a_gap_moves_every_token_after_the_leading_image_block(reordering_model, train_batch):
    model = reordering_model("oracle", position_gap=1000)
    batch, r = _oracle_inputs(model, train_batch)
    is_image = (batch["input_ids"] == model.config.image_token_id).gather(1, r.order)
    block = leading_block(is_image, batch["attention_mask"])
    for b in range(len(r.order)):
        last = int(block[b].nonzero().max())
        jumps = r.position_ids[b, 1:] - r.position_ids[b, :-1]
        assert jumps[last] == 1001 and (jumps[:last] == 1).all() and (jumps[last + 1:] == 1).all()
