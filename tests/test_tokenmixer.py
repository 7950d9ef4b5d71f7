"""Properties of gpslib.tokenmixer (Algorithm 1's sequence)."""

import pytest
import torch

from gpslib.tokenmixer import grouped_order


def test_unmatched_image_tokens_come_first_then_each_group_before_its_word():
    order = grouped_order(torch.tensor([-1, 1, 0, 1, -1]), n_text=3)
    # image 0..4, text 5..7
    assert order.tolist() == [0, 4, 2, 5, 1, 3, 6, 7]


def test_after_placement_puts_the_word_before_its_group():
    order = grouped_order(torch.tensor([-1, 1, 0, 1, -1]), n_text=3, placement="after")
    assert order.tolist() == [0, 4, 5, 2, 6, 1, 3, 7]


def test_nothing_matched_keeps_the_image_first_order():
    order = grouped_order(torch.full((6,), -1), n_text=4)
    assert order.tolist() == list(range(10))


def test_batched_order_equals_per_sample_orders():
    g = torch.Generator().manual_seed(0)
    assignment = torch.randint(-1, 5, (3, 7), generator=g)
    batched = grouped_order(assignment, n_text=5)
    for b in range(3):
        assert torch.equal(batched[b], grouped_order(assignment[b], n_text=5))
        assert sorted(batched[b].tolist()) == list(range(12))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"assignment": torch.tensor([0, 3]), "n_text": 3}, r"\[0, 3\]"),
        ({"assignment": torch.tensor([0]), "n_text": 2, "placement": "middle"}, "'middle'"),
        ({"assignment": torch.tensor([0]), "n_text": -1}, "n_text=-1"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grouped_order(**kwargs)
