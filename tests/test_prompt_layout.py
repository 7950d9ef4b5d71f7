"""Properties of gpslib.prompt_layout: where the movable tokens are, and the whole-sequence order."""

import numpy as np
import pytest
import torch

from gpslib.prompt_layout import ignore_image_label_copies, prompt_layout, take_rows
from gpslib.tokenmixer import grouped_order

IMG, BOS, PAD, S1, S2 = 9, 1, 0, 3, 4
SEP = [S1, S2]  # the assistant separator: two tokens

# right padding with an answer after the separator, and left padding (a generation prompt)
IDS = torch.tensor([[BOS, 5, IMG, IMG, 6, S1, S2, 7, 8, PAD],
                    [PAD, PAD, BOS, IMG, 5, IMG, 6, 7, S1, S2]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
                     [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])


def test_bos_answer_and_padding_stay_out_of_the_movable_tokens():
    layout = prompt_layout(IDS, MASK, IMG, BOS, SEP)
    assert layout.image_pos.tolist() == [[2, 3], [3, 5]]
    assert layout.n_text.tolist() == [4, 5]
    assert layout.text_pos[0, :4].tolist() == [1, 4, 5, 6] and layout.text_pos[1].tolist() == [4, 6, 7, 8, 9]
    assert layout.text_mask.tolist() == [[True] * 4 + [False], [True] * 5]
    # slots: image and text positions together, in order; T where a sample has fewer
    assert layout.slot_pos.tolist() == [[1, 2, 3, 4, 5, 6, 10], [3, 4, 5, 6, 7, 8, 9]]
    assert layout.slot_mask.tolist() == [[True] * 6 + [False], [True] * 7]


def _rules(ids, mask, bos):
    """The module docstring's rules, one token at a time."""
    real = [p for p in range(len(ids)) if mask[p]]
    end = next(real[i] + 2 for i in range(len(real) - 1)
               if ids[real[i]] == S1 and ids[real[i + 1]] == S2 and real[i + 1] == real[i] + 1)
    image, text = [], []
    for k, p in enumerate(real):
        if ids[p] == IMG:
            image.append(p)
        elif p < end and not (k == 0 and bos is not None and ids[p] == bos):
            text.append(p)
    return image, text


@pytest.mark.parametrize("bos", [BOS, None])
def test_layout_follows_the_rules_token_by_token(bos):
    rng = np.random.default_rng(1)
    for _ in range(200):  # left or right padding, the separator anywhere after the image, answers
        b, m = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        rows, masks = [], []
        t = 16
        for _ in range(b):
            n_before, n_mid = int(rng.integers(0, 3)), int(rng.integers(0, 3))
            body = ([BOS] if rng.random() < 0.8 else []) + list(rng.choice([5, 6, 7, BOS], n_before)) + [IMG] * m
            body += list(rng.choice([5, 6, 7, S1], n_mid)) + SEP + list(rng.choice([5, 6, S2, BOS], int(rng.integers(0, 3))))
            pad = t - len(body)
            left = rng.random() < 0.5
            rows.append(([PAD] * pad + body) if left else (body + [PAD] * pad))
            masks.append(([0] * pad + [1] * len(body)) if left else ([1] * len(body) + [0] * pad))
        ids, mask = torch.tensor(rows), torch.tensor(masks)
        layout = prompt_layout(ids, mask, IMG, bos, SEP)
        for i in range(b):
            image, text = _rules(ids[i].tolist(), mask[i].tolist(), bos)
            n = int(layout.n_text[i])
            assert layout.image_pos[i].tolist() == image
            assert layout.text_pos[i, :n].tolist() == text
            assert layout.slot_pos[i, : len(image) + n].tolist() == sorted(image + text)
            assert (layout.slot_pos[i, len(image) + n:] == t).all()


def test_sequence_order_writes_the_local_order_into_the_slots():
    layout = prompt_layout(IDS, MASK, IMG, BOS, SEP)
    m, n = 2, 5
    # row 0: second image token before text 1; row 1: first image token after everything
    assignment = torch.tensor([[-1, 1], [4, -1]])
    local = grouped_order(assignment, n, "before")
    order = layout.sequence_order(local)
    assert order[0].tolist() == [0, 2, 1, 3, 4, 5, 6, 7, 8, 9]
    assert order[1].tolist() == [0, 1, 2, 5, 4, 6, 7, 8, 3, 9]
    for row in order:
        assert sorted(row.tolist()) == list(range(10))
    assert m + n == local.shape[1]


@pytest.mark.parametrize("ids, mask, labels, match", [
    (torch.tensor([[BOS, 5, 6, S1, S2]]), None, None, "no image token"),
    (torch.tensor([[BOS, IMG, 5, S1, 6]]), None, None, "no assistant separator"),
    (torch.tensor([[BOS, IMG, 5, S1, S2, PAD]]), torch.tensor([[1, 1, 1, 1, 0, 0]]), None, "no assistant separator"),
    (torch.tensor([[BOS, IMG, S1, S2, IMG]]), None, None, "after its assistant separator"),
    (torch.tensor([[BOS, IMG, S1, S2], [BOS, IMG, IMG, S1]]), None, None, "different image token counts|separator"),
    (torch.tensor([[BOS, IMG, 5, S1, S2]]), None, torch.tensor([[-100, 5, 5, S1, S2]]), "cover image tokens"),
])
def test_bad_prompts_raise_value_errors_naming_the_sample(ids, mask, labels, match):
    with pytest.raises(ValueError, match=match):
        prompt_layout(ids, mask, IMG, BOS, SEP, labels)


def test_an_image_token_may_carry_its_own_id_as_label_and_the_copies_are_ignored():
    ids = torch.tensor([[BOS, IMG, 5, S1, S2, 7]])
    trl = ids.clone()  # TRL's vision collator: input_ids as labels, padding masked
    layout = prompt_layout(ids, None, IMG, BOS, SEP, trl)
    assert layout.image_pos.tolist() == [[1]]
    assert ignore_image_label_copies(ids, trl, IMG).tolist() == [[BOS, -100, 5, S1, S2, 7]]
    other = trl.masked_fill(ids == 5, IMG)  # a word labelled with the image id stays: only image tokens' copies go
    assert ignore_image_label_copies(ids, other, IMG).tolist() == [[BOS, -100, IMG, S1, S2, 7]]


def test_the_layout_runs_on_the_device_of_the_ids():
    # with "meta" as the default device, any tensor made without device= lands off the ids' device
    # (on a CPU-only machine that is the only way a missing device= shows)
    reference = prompt_layout(IDS, MASK, IMG, BOS, SEP)
    local = grouped_order(torch.tensor([[-1, 1], [4, -1]]), 5, "before")
    with torch.device("meta"):
        layout = prompt_layout(IDS, MASK, IMG, BOS, SEP)
        order = layout.sequence_order(local)
        masks = (layout.text_mask, layout.slot_mask)
    tensors = (layout.image_pos, layout.text_pos, layout.slot_pos, layout.n_text, order, *masks)
    assert all(t.device == IDS.device for t in tensors)
    assert torch.equal(layout.slot_pos, reference.slot_pos) and torch.equal(order, reference.sequence_order(local))


def test_take_rows_equals_gather_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.stack([torch.randperm(7, generator=g)[:4] for _ in range(3)])  # (3, 4) distinct rows
    weight = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    got = take_rows(x, index)
    want = x.gather(1, index[..., None].expand(-1, -1, 5))
    assert torch.equal(got, want)
    (grad_got,) = torch.autograd.grad((got * weight).sum(), x)
    (grad_want,) = torch.autograd.grad((want * weight).sum(), x)
    assert torch.equal(grad_got, grad_want)
    assert torch.equal(got[1, 2], x[1, index[1, 2]])


@pytest.mark.parametrize("shape, index_shape", [((3, 7), (3, 4)), ((3, 7, 5), (2, 4)), ((3, 7, 5), (3,))])
def test_take_rows_names_the_shapes_it_cannot_take(shape, index_shape):
    with pytest.raises(ValueError, match=r"take_rows needs x \(B, T, D\) and index \(B, K\)"):
        take_rows(torch.zeros(shape), torch.zeros(index_shape, dtype=torch.long))
