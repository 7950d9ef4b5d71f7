"""Properties of gpslib.rope: the paper's demonstration and its batched forms."""

import math

import numpy as np
import pytest
import torch

from gpslib import rope

ATOL = 1e-9


def _pair(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)


def test_position_zero_is_the_plain_scaled_dot_product():
    q, k = _pair(64)
    assert rope.attention_score(q, k, 0, 0) == pytest.approx(float(q @ k / 8.0), abs=ATOL)
    assert rope.attention_score(q, k, None, None) == pytest.approx(float(q @ k / 8.0), abs=ATOL)


def test_only_relative_distance_matters():
    q, k = _pair(128, seed=1)
    base = rope.attention_score(q, k, 3, 10)
    for shift in (1, 57, 600):
        assert rope.attention_score(q, k, 3 + shift, 10 + shift) == pytest.approx(base, abs=1e-8)


def test_numpy_and_torch_inputs_give_the_same_score():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(32), rng.standard_normal(32)
    assert rope.attention_score(q, k, 5, 9) == pytest.approx(
        rope.attention_score(torch.from_numpy(q), torch.from_numpy(k), 5, 9), abs=ATOL
    )


def test_rotation_preserves_norm():
    q, _ = _pair(64, seed=2)
    assert torch.linalg.norm(rope.rotate(q, 123.0)) == pytest.approx(float(torch.linalg.norm(q)), abs=1e-10)


def test_batched_distance_scores_match_the_single_pair_demonstration():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, 64, generator=g, dtype=torch.float64)
    k = torch.randn(5, 64, generator=g, dtype=torch.float64)
    distances = torch.tensor([0.0, 1.0, -7.0, -300.0])
    batched = rope.score_vs_distance(q, k, distances)
    assert batched.shape == (5, 4)
    for p in range(5):
        for j, dist in enumerate(distances.tolist()):
            # key at 600 + dist, query at 600: pos_k - pos_q = dist
            single = rope.attention_score(q[p], k[p], 600, 600 + dist)
            assert batched[p, j].item() == pytest.approx(single, abs=1e-9)
    paired = rope.paired_scores(q[:4], k[:4], distances)
    assert torch.allclose(paired, batched[:4].diagonal(), atol=1e-12)


def test_interleaved_pairs_agree_with_transformers_llama_rotary_after_relayout():
    q, k = _pair(64, seed=4)
    for pos_q, pos_k in ((0, 0), (3, 40), (599, 600), (1, 600)):
        ours = rope.attention_score(q, k, pos_q, pos_k)
        theirs = rope.hf_attention_score(
            rope.interleaved_to_half_split(q), rope.interleaved_to_half_split(k), pos_q, pos_k
        )
        # transformers computes its inverse frequencies in float32
        assert theirs == pytest.approx(ours, abs=1e-5)


def test_without_relayout_transformers_rotary_differs():
    q, k = _pair(64, seed=5)
    assert abs(rope.hf_attention_score(q, k, 1, 600) - rope.attention_score(q, k, 1, 600)) > 1e-3


def test_correlated_pairs_have_the_requested_cosine():
    g = torch.Generator().manual_seed(6)
    q, k = rope.correlated_pairs(2000, 256, 0.5, g)
    cosine = torch.nn.functional.cosine_similarity(q, k, dim=-1).mean().item()
    assert cosine == pytest.approx(0.5, abs=0.01)


def test_grouped_layout_brings_related_pairs_adjacent():
    assignment = torch.tensor([-1, 1, -1, 0])  # 4 image tokens, 2 text tokens
    order = rope.grouped_prompt_order(assignment, 2, "before")
    # [BOS, img0, img2, img3, text0, img1, text1]
    assert order.tolist() == [0, 1, 3, 4, 5, 2, 6]
    pairs = torch.tensor([[5, 4], [6, 2]])  # (text0, img3), (text1, img1)
    q, k = _pair(64, seed=7)
    q2, k2 = q.repeat(2, 1), k.repeat(2, 1)
    scores = rope.layout_pair_scores(order, pairs, q2, k2)
    expected = rope.attention_score(q, k, 1, 0)  # query one position after its key
    assert torch.allclose(scores, torch.full((2,), expected, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rope.attention_score(np.ones(3), np.ones(3), 0, 1), "d=3"),
        (lambda: rope.attention_score(np.ones(4), np.ones(6), 0, 1), r"\(4,\) and \(6,\)"),
        (lambda: rope.attention_score(np.ones(4), np.ones(4), 0, None), "pos_k=None"),
        (lambda: rope.rope_frequencies(8, base=1.0), "base=1.0"),
        (lambda: rope.correlated_pairs(4, 8, 1.5), "cosine=1.5"),
        (lambda: rope.distance_curves([0.5], 4, 8, -1), "max_distance=-1"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_distance_curves_start_at_the_no_rope_score():
    df = rope.distance_curves([0.5], n_pairs=50, d=16, max_distance=5, seed=0)
    first = df[df["distance"] == 0].iloc[0]
    assert first["mean"] == pytest.approx(first["no_rope"], abs=1e-12)
    assert (df["lo"] <= df["mean"]).all() and (df["mean"] <= df["hi"]).all()
    assert math.isfinite(df["mean"].sum())
