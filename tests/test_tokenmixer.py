"""Properties of gpslib.tokenmixer (Algorithm 1's sequence)."""

import pytest
import torch

from gpslib.comparison_only import cosine_reorder_per_token
from gpslib.tokenmixer import (
    cosine_assignment,
    cosine_reorder,
    cosine_similarity_matrix,
    grounding_scores,
    grouped_order,
    random_assignment_like,
    similarity_stats,
    threshold_sweep,
)


def test_unmatched_image_tokens_come_first_then_each_group_before_its_word():
    order = grouped_order(torch.tensor([-1, 1, 0, 1, -1]), n_text=3, placement="before")
    # image 0..4, text 5..7
    assert order.tolist() == [0, 4, 2, 5, 1, 3, 6, 7]


def test_after_placement_puts_the_word_before_its_group():
    order = grouped_order(torch.tensor([-1, 1, 0, 1, -1]), n_text=3, placement="after")
    assert order.tolist() == [0, 4, 5, 2, 6, 1, 3, 7]


def test_nothing_matched_keeps_the_image_first_order():
    order = grouped_order(torch.full((6,), -1), n_text=4, placement="before")
    assert order.tolist() == list(range(10))


def test_batched_order_equals_per_sample_orders():
    g = torch.Generator().manual_seed(0)
    assignment = torch.randint(-1, 5, (3, 7), generator=g)
    batched = grouped_order(assignment, n_text=5, placement="after")
    for b in range(3):
        assert torch.equal(batched[b], grouped_order(assignment[b], n_text=5, placement="after"))
        assert sorted(batched[b].tolist()) == list(range(12))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"assignment": torch.tensor([0, 3]), "n_text": 3, "placement": "before"}, r"\[0, 3\]"),
        ({"assignment": torch.tensor([0]), "n_text": 2, "placement": "middle"}, "'middle'"),
        ({"assignment": torch.tensor([0]), "n_text": -1, "placement": "before"}, "n_text=-1"),
        ({"assignment": torch.tensor([0.0]), "n_text": 1, "placement": "before"}, "integer"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grouped_order(**kwargs)


def _embeds(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.1, 0.3])
def test_vectorised_reorder_equals_the_authors_per_token_loop(placement, threshold):
    for seed in range(20):
        n = seed % 6  # no text at all, too
        image, text = _embeds(seed, 12, 8), _embeds(100 + seed, n, 8)
        expected = cosine_reorder_per_token(image, text, threshold, placement)
        assert torch.equal(cosine_reorder(image, text, threshold, placement), expected), seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_matrix_is_image_by_text_cosine_of_every_pair(dtype):
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(2, 7, 16, generator=g, dtype=dtype), torch.randn(2, 5, 16, generator=g, dtype=dtype)
    sim = cosine_similarity_matrix(image, text)
    want = torch.nn.functional.cosine_similarity(image[:, :, None], text[:, None], dim=-1, eps=1e-8)
    assert sim.shape == (2, 7, 5) and sim.dtype == dtype
    torch.testing.assert_close(sim, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert torch.equal(sim.argmax(-1), want.argmax(-1))


def test_threshold_no_token_reaches_leaves_image_first_order():
    image, text = _embeds(2, 6, 4), _embeds(3, 3, 4)
    # a threshold above every similarity: nothing moves
    best = similarity_stats(image, text, threshold=0.1)["best"].max().item()
    order = cosine_reorder(image, text, threshold=min(1.0, best + 1e-3), placement="before")
    assert order.tolist() == list(range(9))


def test_ties_go_to_the_lowest_text_index():
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[0.0, 1.0], [2.0, 0.0], [3.0, 0.0]])  # text 1 and 2 tie at cosine 1
    assignment, best = cosine_assignment(image, text, threshold=0.5)
    assert assignment.tolist() == [1] and best.tolist() == [1.0]


def test_batched_reorder_with_padding_equals_per_sample_reorder():
    image, text = _embeds(4, 3, 10, 8), _embeds(5, 3, 6, 8)
    lengths = [6, 4, 2]
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    batched = cosine_reorder(image, text, 0.05, "before", text_mask=mask)
    for b, n in enumerate(lengths):
        alone = cosine_reorder(image[b], text[b, :n], 0.05, "before")
        real = batched[b][(batched[b] < 10 + n)]  # drop padded text positions
        assert torch.equal(real, alone)


def test_no_image_tokens_leaves_the_text_in_order():
    assert grouped_order(torch.empty(0, dtype=torch.long), n_text=3, placement="before").tolist() == [0, 1, 2]
    assert cosine_reorder(torch.zeros(2, 0, 4), torch.ones(2, 3, 4), 0.1, "before").tolist() == [[0, 1, 2]] * 2


def test_empty_text_leaves_every_image_token_unmatched():
    image = _embeds(6, 4, 8)
    order = cosine_reorder(image, torch.zeros(0, 8), 0.1, "after")
    assert order.tolist() == [0, 1, 2, 3]
    assert similarity_stats(image, torch.zeros(0, 8), 0.1)["fraction_moved"] == 0.0


def test_fraction_moved_counts_matched_image_tokens():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0]])
    assert similarity_stats(image, text, threshold=0.5)["fraction_moved"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cosine_reorder(torch.ones(2, 3), torch.ones(2, 4), 0.1, "before"), "D=3"),
        (lambda: cosine_reorder(torch.ones(2, 3), torch.ones(2, 3), threshold=1.5, placement="before"), "threshold=1.5"),
        (lambda: cosine_reorder(torch.ones(2, 3), torch.ones(2, 3), threshold=True, placement="before"), "threshold=True"),
        (lambda: cosine_reorder(torch.ones(2, 2, 3), torch.ones(3, 2, 3), 0.1, "before"), "B=2"),
        (lambda: cosine_reorder(torch.ones(2, 3), torch.ones(1, 2, 3), 0.1, "before"), "both"),
        (lambda: cosine_assignment(torch.ones(2, 3), torch.ones(2, 3), 0.1, text_mask=torch.ones(3, dtype=torch.bool)), r"\(2,\)"),
    ],
)
def test_bad_reorder_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_grounding_scores_count_a_patch_as_correct_when_its_word_names_its_object():
    image_object = torch.tensor([0, 0, 1, -1])
    text_object = torch.tensor([-1, 0, 0, 1])  # "the red circle square": tokens 1, 2 name object 0
    assignment = torch.tensor([2, 3, -1, 1])  # patch 0 -> "circle" (right), patch 1 -> object 1 (wrong)
    scores = grounding_scores(assignment, image_object, text_object)
    assert scores["n_moved"] == 3 and scores["n_correct"] == 1 and scores["n_nameable"] == 3
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["moved"] == pytest.approx(0.75)


def test_random_control_moves_as_many_tokens_to_real_words_and_repeats_per_seed():
    assignment = torch.tensor([[-1, 2, 0, -1, 1], [-1, -1, -1, -1, -1], [0, 0, 0, 0, 0]])
    n_text = torch.tensor([3, 4, 2])
    seeds = torch.tensor([11, 12, 13])
    out = random_assignment_like(assignment, n_text, seeds)
    assert ((out >= 0).sum(1)).tolist() == [3, 0, 5]
    assert all(int(out[b].max()) < int(n_text[b]) for b in range(3))
    assert torch.equal(random_assignment_like(assignment[2:], n_text[2:], seeds[2:]), out[2:])  # alone = in a batch
    assert not torch.equal(random_assignment_like(assignment, n_text, seeds + 1), out)


def test_threshold_sweep_counts_moves_and_right_moves_per_threshold():
    image = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]])  # patches of objects 0, 1, 0
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # words naming objects 0, 1, nothing
    image_object, text_object = torch.tensor([[0, 1, 0]]), torch.tensor([[0, 1, -1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    sweep = threshold_sweep(image, text, mask, image_object, text_object, [-1.0, 0.999, 1.0])
    assert sweep.loc[-1.0, "moved"] == 1.0 and sweep.loc[-1.0, "precision"] == 1.0  # every patch to its own word
    assert sweep.loc[0.999, "moved"] == pytest.approx(2 / 3)  # the third patch's best similarity is 0.995
    assert sweep.loc[1.0, "moved"] == pytest.approx(2 / 3) and sweep.loc[-1.0, "recall"] == 1.0
    assert 0.0 <= sweep.loc[-1.0, "random precision"] <= 1.0


def test_threshold_sweep_gives_the_fraction_moved_an_interval_over_the_prompts():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(12, 6, 8, generator=g), torch.randn(12, 4, 8, generator=g)
    mask = torch.ones(12, 4, dtype=torch.bool)
    objects_i, objects_t = torch.zeros(12, 6, dtype=torch.long), torch.zeros(12, 4, dtype=torch.long)
    sweep = threshold_sweep(image, text, mask, objects_i, objects_t, [-1.0, 0.3, 1.0])
    assert (sweep["moved ci_low"] <= sweep["moved"]).all() and (sweep["moved"] <= sweep["moved ci_high"]).all()
    assert sweep.loc[0.3, "moved ci_low"] < sweep.loc[0.3, "moved ci_high"]  # prompts differ: a real width
    for th, everything in ((-1.0, 1.0), (1.0, 0.0)):  # every token moves / none does: no width to it
        assert sweep.loc[th, ["moved", "moved ci_low", "moved ci_high"]].tolist() == [everything] * 3
    assert threshold_sweep(image, text, mask, objects_i, objects_t, [0.3]).equals(sweep.loc[[0.3]])  # seeded
