"""Properties of gpslib.prompt_layout: where the movable tokens are, and the fused cosine pass."""

import numpy as np
import pytest
import torch

from gpslib.prompt_layout import cosine_sequence, prompt_layout
from gpslib.tokenmixer import cosine_assignment, grouped_order

IMG, BOS, PAD = 9, 1, 0

# two prompts of T = 8: right padding with an answer, and left padding without labels
IDS = np.array([[BOS, 5, IMG, IMG, 6, 7, 8, PAD],
                [PAD, PAD, BOS, IMG, 5, IMG, 6, 7]])
MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 0],
                 [0, 0, 1, 1, 1, 1, 1, 1]])
LABELS = np.array([[-100, -100, -100, -100, -100, 7, 8, -100],
                   [-100] * 8])


def test_bos_answer_and_padding_stay_out_of_the_movable_tokens():
    layout = prompt_layout(IDS, MASK, LABELS, IMG, BOS)
    assert layout.image_pos.tolist() == [[2, 3], [3, 5]]
    assert layout.n_text.tolist() == [2, 3]
    assert layout.text_pos[0, :2].tolist() == [1, 4] and layout.text_pos[1].tolist() == [4, 6, 7]
    assert layout.text_mask.tolist() == [[True, True, False], [True, True, True]]
    # slots: image and text positions together, in order; T where a sample has fewer
    assert layout.slot_pos.tolist() == [[1, 2, 3, 4, 8], [3, 4, 5, 6, 7]]
    assert layout.slot_mask.tolist() == [[True] * 4 + [False], [True] * 5]


def test_without_mask_labels_or_bos_every_token_is_movable():
    layout = prompt_layout(IDS[1:, 2:], None, None, IMG, None)
    assert layout.image_pos.tolist() == [[1, 3]]
    assert layout.text_pos.tolist() == [[0, 2, 4, 5]]  # BOS is text when there is no BOS id


def _rules(ids, mask, labels, bos):
    """The module docstring's rules, one token at a time."""
    image, text = [], []
    first, answer = True, False
    for p in range(len(ids)):
        if mask is not None and not mask[p]:
            continue
        answer |= labels is not None and labels[p] != -100
        if ids[p] == IMG:
            image.append(p)
        elif not answer and not (first and bos is not None and ids[p] == bos):
            text.append(p)
        first = False
    return image, text


@pytest.mark.parametrize("with_mask, with_labels, bos", [(True, True, BOS), (True, False, BOS), (False, True, None),
                                                         (False, False, BOS)])
def test_layout_follows_the_rules_token_by_token(with_mask, with_labels, bos):
    rng = np.random.default_rng(1)
    for _ in range(50):  # masks with holes, labels anywhere (padding too), images in the answer
        b, t, m = int(rng.integers(1, 4)), int(rng.integers(1, 12)), int(rng.integers(1, 3))
        ids = rng.choice([BOS, 5, 6, 7], (b, t))
        for i in range(b):
            ids[i, rng.choice(t, min(m, t), replace=False)] = IMG
        mask = (rng.random((b, t)) < 0.8).astype(np.int32) if with_mask else None
        if mask is not None:
            mask[ids == IMG] = 1  # the same image count in every row
        labels = np.where(rng.random((b, t)) < 0.2, 5, -100) if with_labels else None
        layout = prompt_layout(ids, mask, labels, IMG, bos)
        for i in range(b):
            image, text = _rules(ids[i], None if mask is None else mask[i], None if labels is None else labels[i], bos)
            n = int(layout.n_text[i])
            assert layout.image_pos[i].tolist() == image
            assert layout.text_pos[i, :n].tolist() == text
            assert layout.slot_pos[i, : len(image) + n].tolist() == sorted(image + text)
            assert (layout.slot_pos[i, len(image) + n:] == t).all()


def test_segments_are_the_layout_as_tensors():
    layout = prompt_layout(IDS, MASK, LABELS, IMG, BOS)
    seg = layout.segments()
    for name in ("image_pos", "text_pos", "text_mask", "slot_pos", "slot_mask"):
        assert np.array_equal(seg[name].numpy(), getattr(layout, name)), name


@pytest.mark.parametrize(
    "ids, match",
    [
        (np.array([[BOS, 5, 6], [BOS, IMG, 6]]), "sample 0 has no image placeholder"),
        (np.array([[BOS, IMG, 6], [BOS, IMG, IMG]]), r"different image token counts \[1, 2\]"),
        (np.array([BOS, IMG, 6]), r"\(B, T\)"),
    ],
)
def test_bad_prompts_raise_value_error_naming_the_value(ids, match):
    with pytest.raises(ValueError, match=match):
        prompt_layout(ids, None, None, IMG, BOS)
    with pytest.raises(ValueError, match=match):
        cosine_sequence(ids, None, None, IMG, BOS, np.zeros((ids.size + 2, 4), np.float32), 0.1, "before")


def test_a_mask_of_another_shape_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 8\)"):
        prompt_layout(IDS, MASK[:, :4], None, IMG, BOS)
    with pytest.raises(ValueError, match=r"B >= 1; got shape \(0, 8\)"):
        prompt_layout(IDS[:0], None, None, IMG, BOS)


def test_feature_rows_that_do_not_match_the_placeholders_raise():
    table = np.zeros((IDS.size + 3, 4), np.float32)  # 3 feature rows for 2 x 2 placeholders
    with pytest.raises(ValueError, match="the images give 3 feature rows, the prompts hold 4 <image> tokens"):
        cosine_sequence(IDS, MASK, LABELS, IMG, BOS, table, 0.1, "before")
    with pytest.raises(ValueError, match="'middle'"):
        cosine_sequence(IDS, MASK, LABELS, IMG, BOS, table, 0.1, "middle")
    with pytest.raises(ValueError, match="threshold=nan"):
        cosine_sequence(IDS, MASK, LABELS, IMG, BOS, table, float("nan"), "before")
    with pytest.raises(ValueError, match="float16"):
        cosine_sequence(IDS, MASK, LABELS, IMG, BOS, table.astype(np.float16), 0.1, "before")


def _reference(ids, mask, labels, table, threshold, placement):
    """The same reordering from the tensor functions: cosine_assignment, grouped_order, slots."""
    layout = prompt_layout(ids, mask, labels, IMG, BOS)
    b, t = ids.shape
    m = layout.image_pos.shape[1]
    tab = torch.from_numpy(table)
    order = np.tile(np.arange(t), (b, 1))
    for i in range(b):
        n = int(layout.n_text[i])
        image = tab[b * t + i * m: b * t + (i + 1) * m]
        text = tab[i * t + torch.from_numpy(layout.text_pos[i, :n])]
        assignment, _ = cosine_assignment(image, text, threshold)
        local = grouped_order(assignment, n, placement).numpy()
        pos = np.concatenate([layout.image_pos[i], layout.text_pos[i, :n]])
        order[i, layout.slot_pos[i, : m + n]] = pos[local]
    return order


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.2, 1.0])
def test_fused_cosine_sequence_equals_the_tensor_functions(placement, threshold):
    rng = np.random.default_rng(0)
    b, t, m, d = 5, 30, 6, 16
    ids = rng.integers(2, 9, (b, t))
    mask = np.ones((b, t), np.int64)
    labels = np.full((b, t), -100)
    for i in range(b):  # left or right padding, an answer on some rows
        pad = int(rng.integers(0, 6))
        real = slice(pad, t) if i % 2 else slice(0, t - pad)
        mask[i] = 0
        mask[i, real] = 1
        start = real.start
        ids[i, start] = BOS
        ids[i, rng.choice(np.arange(start + 1, start + 12), m, replace=False)] = IMG
        if i % 3 == 0:
            labels[i, real.stop - 3: real.stop] = ids[i, real.stop - 3: real.stop]
    table = rng.standard_normal((b * t + b * m, d)).astype(np.float32)
    table[: b * t: 7] += 2 * table[b * t]  # some text close to some image tokens
    order, source, layout = cosine_sequence(ids, mask, labels, IMG, BOS, table, threshold, placement)
    assert np.array_equal(order, _reference(ids, mask, labels, table, threshold, placement))
    # source: the table row each new position reads (image features at the placeholders)
    merged = np.arange(b * t).reshape(b, t)
    merged[np.arange(b)[:, None], layout.image_pos] = b * t + np.arange(b * m).reshape(b, m)
    assert np.array_equal(source, np.take_along_axis(merged, order, 1))
    for row in order:
        assert sorted(row.tolist()) == list(range(t))
