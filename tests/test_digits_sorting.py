"""Properties of gpslib.digits_sorting (sorting multi-digit numbers, NeuralSort's protocol)
and of the metrics it reports, gpslib.permutation_learning.sorting_metrics."""

import math

import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau

from gpslib import digits_sorting, paper
from gpslib.digits_sorting import (
    DIGIT_SIZE,
    DigitSorter,
    compose_numbers,
    digits_sorting_table,
    load_digit_pools,
    run_digits_benchmark,
    run_digits_sorting,
    sample_sequences,
)
from gpslib.gps import GPSSettings
from gpslib.permutation_learning import sorting_metrics
from gpslib.run_profiles import profile_settings
from gpslib.sinkhorn import is_permutation, order_to_perm_matrix


TINY = {"steps": 3, "batch_size": 4, "dim": 8, "channels": (2, 4), "n_test": 8, "test_batch_size": 4,
        "gps": {"num_layers": 1, "ffn_dim": 8, "sinkhorn_iters": 5, "hard_after": 1.0}}


@pytest.fixture(scope="module")
def pools():
    return load_digit_pools()


def _random_orders(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)])


# ----------------------------------------------------------------------------- metrics
def test_kendall_tau_is_one_for_the_identity_and_minus_one_for_the_reversal():
    order = _random_orders(4, 6, seed=0)
    right = sorting_metrics(order, order)
    assert right == {"exact": 1.0, "elementwise": 1.0, "kendall_tau": 1.0}
    reversed_ = sorting_metrics(order.flip(-1), order)  # the sequence comes out backwards
    assert reversed_["kendall_tau"] == pytest.approx(-1.0, abs=1e-12)
    assert reversed_["exact"] == 0.0 and reversed_["elementwise"] == 0.0  # N even: no fixed point


def test_exact_counts_whole_sequences_and_elementwise_counts_positions():
    order = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    pred = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])  # second sequence: one swap
    m = sorting_metrics(pred, order)
    assert m["exact"] == 0.5
    assert m["elementwise"] == pytest.approx(6 / 8)
    assert m["kendall_tau"] == pytest.approx((1.0 + (5 - 1) / 6) / 2)  # one discordant pair of six


def test_kendall_tau_matches_scipy_on_the_ranks_of_the_items():
    order, pred = _random_orders(20, 7, seed=1), _random_orders(20, 7, seed=2)
    rank_true, rank_pred = order.argsort(-1), pred.argsort(-1)  # rank of item i
    expected = sum(kendalltau(rank_pred[b], rank_true[b]).statistic for b in range(20)) / 20
    assert sorting_metrics(pred, order)["kendall_tau"] == pytest.approx(expected, abs=1e-12)


def test_hard_permutation_matrices_score_like_their_orders():
    order, pred = _random_orders(5, 6, seed=3), _random_orders(5, 6, seed=4)
    assert sorting_metrics(order_to_perm_matrix(pred), order) == sorting_metrics(pred, order)


def test_a_repeated_item_in_a_row_argmax_counts_as_a_tie():
    order = torch.tensor([[2, 0, 3, 1]])  # true ranks of items 0..3: 1, 3, 0, 2
    pred = torch.tensor([[2, 0, 0, 1]])  # item 0 twice, item 3 dropped
    y = torch.tensor([0, 1, 1, 3])  # true ranks of the predicted sequence
    assert sorting_metrics(pred, order)["kendall_tau"] == pytest.approx(
        kendalltau(torch.arange(4), y).statistic, abs=1e-12)


@pytest.mark.parametrize(
    "pred, order, match",
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [0, 1, 2]]), "permutation"),
        (torch.tensor([[0, 1, 3]]), torch.tensor([[0, 1, 2]]), r"\[0, 3\).*3"),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2]]), r"\(1, 2\)"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), r"\(3,\)"),
    ],
)
def test_bad_metric_inputs_raise_value_error_naming_the_value(pred, order, match):
    with pytest.raises(ValueError, match=match):
        sorting_metrics(pred, order)


# ----------------------------------------------------------------------------- data
def test_pools_are_disjoint_and_hold_every_digit(pools):
    assert set(pools.train_source.tolist()).isdisjoint(pools.test_source.tolist())
    assert len(pools.train_source) + len(pools.test_source) == 1797  # all of sklearn's digits
    assert set(pools.train_labels.tolist()) == set(pools.test_labels.tolist()) == set(range(10))
    assert len(pools.test_source) == pytest.approx(1797 / 3, abs=10)
    assert 0.0 <= float(pools.train_images.min()) and float(pools.train_images.max()) <= 1.0


def test_numbers_are_composed_from_their_digit_images(pools):
    images, labels = pools.split("train")
    numbers = torch.tensor([[7, 4096, 9999], [1234, 50, 8]])
    out, digit_index = compose_numbers(numbers, images, labels, 4, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, DIGIT_SIZE, 4 * DIGIT_SIZE) and digit_index.shape == (2, 3, 4)
    for b in range(2):
        for i in range(3):
            digits = [int(c) for c in f"{int(numbers[b, i]):04d}"]  # most significant first
            assert labels[digit_index[b, i]].tolist() == digits
            for k in range(4):
                tile = out[b, i, :, k * DIGIT_SIZE:(k + 1) * DIGIT_SIZE]
                assert torch.equal(tile, images[digit_index[b, i, k]])


def test_train_and_test_sequences_share_no_digit_image(pools):
    g = torch.Generator().manual_seed(1)
    numbers = torch.randint(10_000, (64, 5), generator=g)
    _, train_idx = compose_numbers(numbers, *pools.split("train"), 4, g)
    test_seq, test_idx = compose_numbers(numbers, *pools.split("test"), 4, g)
    assert set(pools.train_source[train_idx].flatten().tolist()).isdisjoint(
        pools.test_source[test_idx].flatten().tolist())
    tiles = test_seq.reshape(64, 5, DIGIT_SIZE, 4, DIGIT_SIZE).transpose(2, 3).reshape(-1, DIGIT_SIZE ** 2)
    distances = torch.cdist(tiles, pools.train_images.reshape(-1, DIGIT_SIZE ** 2))
    assert float(distances.min()) > 0  # no test tile equals any training image, pixel for pixel


def test_sequences_hold_distinct_numbers_and_the_target_sorts_them_ascending(pools):
    g = torch.Generator().manual_seed(2)
    seqs, numbers, order = sample_sequences(*pools.split("train"), 200, 10, 1, g)
    assert seqs.shape == (200, 10, DIGIT_SIZE, DIGIT_SIZE)
    assert all(sorted(row.tolist()) == list(range(10)) for row in numbers)  # all ten one-digit values
    assert bool((numbers.gather(1, order).diff(dim=-1) > 0).all())


def test_test_sequences_are_the_same_for_every_seed_and_drawn_from_the_test_pool_only(pools, monkeypatch):
    scored = []  # the test batches each run is scored on
    evaluate = digits_sorting._evaluate
    monkeypatch.setattr(digits_sorting, "_evaluate",
                        lambda model, batches, tau: scored.append(batches) or evaluate(model, batches, tau))
    for n, seed in ((3, 0), (3, 5), (4, 0)):
        run_digits_sorting(n, seed=seed, pools=pools, **TINY)
    (seed0, seed5, other_n) = scored
    assert len(seed0) == TINY["n_test"] // TINY["test_batch_size"]
    for (x0, o0), (x5, o5) in zip(seed0, seed5):
        assert torch.equal(x0, x5) and torch.equal(o0, o5)
    assert other_n[0][0].shape[1] == 4  # n = 4: its own sequences
    tiles = torch.cat([x for x, _ in seed0]).reshape(-1, DIGIT_SIZE, 4, DIGIT_SIZE).transpose(1, 2)
    tiles = tiles.reshape(-1, DIGIT_SIZE ** 2)  # every digit image of every test number
    nearest = lambda pool: torch.cdist(tiles, pool.reshape(-1, DIGIT_SIZE ** 2)).min(-1).values  # noqa: E731
    assert float(nearest(pools.test_images).max()) == 0.0  # each tile is a test-pool image ...
    assert float(nearest(pools.train_images).min()) > 0.0  # ... and none is a training image


def test_seeded_runs_repeat_and_another_seed_trains_differently(pools):
    a = run_digits_sorting(3, seed=0, pools=pools, **TINY)
    b = run_digits_sorting(3, seed=0, pools=pools, **TINY)
    c = run_digits_sorting(3, seed=5, pools=pools, **TINY)
    assert a.equals(b) and a.attrs["exact"] == b.attrs["exact"]
    assert not a["loss"].equals(c["loss"])


# ----------------------------------------------------------------------------- model and training
def test_sorter_gives_a_doubly_stochastic_p_in_training_and_a_permutation_at_test(pools):
    torch.manual_seed(0)
    model = DigitSorter(n_digits=4, dim=8, channels=(2, 4), gps=GPSSettings(num_layers=2, ffn_dim=8, sinkhorn_iters=30))
    seqs, _, _ = sample_sequences(*pools.split("train"), 3, 5, 4, torch.Generator().manual_seed(3))
    P = model(seqs, tau=1.0)
    assert P.shape == (3, 5, 5)
    torch.testing.assert_close(P.sum(-2), torch.ones(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(P.sum(-1), torch.ones(3, 5), atol=1e-3, rtol=0)
    assert bool(is_permutation(model.eval()(seqs, tau=0.1, hard=True, noise=False)).all())


def test_a_short_training_run_beats_chance_on_three_numbers(pools):
    h = run_digits_sorting(3, steps=200, batch_size=16, dim=16, channels=(8, 16), n_test=200, test_batch_size=200,
                           gps={"num_layers": 2, "ffn_dim": 32, "sinkhorn_iters": 10, "hard_after": 1.0}, seed=0,
                           pools=pools)
    # chance (a uniform random order of 3): exact 1/6, element-wise 1/3, Kendall's tau 0;
    # this seed reaches 0.50 / 0.64 / 0.56
    assert h.attrs["exact"] > 2 / 6 and h.attrs["elementwise"] > 1.5 / 3 and h.attrs["kendall_tau"] > 0.3
    assert list(h.columns) == ["step", "loss", "tau", "train_elementwise", "test_exact", "test_elementwise",
                               "test_kendall_tau"]
    assert h["test_exact"].notna().tolist() == [False] * 199 + [True]


# ----------------------------------------------------------------------------- benchmark and table
def test_benchmark_gives_one_row_per_n_and_seed():
    settings = {**TINY, "n_values": [3, 4], "seeds": [0, 1]}
    results = run_digits_benchmark(settings)
    assert results[["n", "seed"]].values.tolist() == [[3, 0], [3, 1], [4, 0], [4, 1]]
    assert results[["exact", "elementwise", "kendall_tau"]].map(math.isfinite).all().all()


def test_table_shows_mean_and_interval_over_seeds_beside_neuralsort_labelled_as_theirs():
    results = pd.DataFrame({"n": [3, 3, 3, 20, 20], "seed": [0, 1, 2, 0, 1],
                            "exact": [0.5, 0.6, 0.7, 0.0, 0.1], "elementwise": [0.7, 0.8, 0.9, 0.2, 0.3],
                            "kendall_tau": [0.6, 0.7, 0.8, 0.4, 0.5]})
    table = digits_sorting_table(results)
    assert table.index.tolist() == [3, 20]
    # n = 3: mean 0.6, sample standard deviation 0.1, Student t with 2 degrees of freedom
    assert table.loc[3, "GPS exact"] == pytest.approx(0.6, abs=1e-12)
    assert table.loc[3, "GPS exact ±95%"] == pytest.approx(4.302652730 * 0.1 / math.sqrt(3), abs=1e-9)
    assert table.loc[20, "GPS Kendall's tau"] == pytest.approx(0.45, abs=1e-12)
    assert table.loc[20, "seeds"] == 2
    assert table.loc[3, "chance exact"] == pytest.approx(1 / 6)
    assert table.loc[3, "chance element-wise"] == pytest.approx(1 / 3)
    assert table.loc[3, "NeuralSort Table 1 (large-MNIST): Gumbel-Sinkhorn exact"] == 0.484
    assert table.loc[3, "NeuralSort Table 1 (large-MNIST): Deterministic NeuralSort element-wise"] == 0.951
    assert math.isnan(table.loc[20, "NeuralSort Table 1 (large-MNIST): Gumbel-Sinkhorn exact"])  # none
    assert "large-MNIST" in table.attrs["note"] and "8x8" in table.attrs["note"]


def test_table_puts_each_neuralsort_figure_in_the_row_of_its_n_and_nan_where_they_report_none():
    reported = sorted({n for by_metric in paper.NEURALSORT_TABLE1.values() for row in by_metric.values() for n in row})
    ns = sorted({*reported, 4, 20})  # 4 and 20: sizes NeuralSort does not report
    results = pd.DataFrame({"n": ns, "seed": 0, "exact": 0.5, "elementwise": 0.5, "kendall_tau": 0.5})
    table = digits_sorting_table(results)
    label = {"exact": "exact", "elementwise": "element-wise"}
    theirs = {f"NeuralSort Table 1 (large-MNIST): {method} {label[key]}": values
              for method, by_metric in paper.NEURALSORT_TABLE1.items() for key, values in by_metric.items()}
    assert sorted(c for c in table.columns if c.startswith("NeuralSort")) == sorted(theirs)
    for column, values in theirs.items():
        assert table.loc[reported, column].tolist() == [values[n] for n in reported], column
        assert table.loc[[4, 20], column].isna().all(), column


def test_cpu_and_paper_profiles_run_every_n_of_neuralsort_with_at_least_three_seeds():
    theirs = sorted({n for by_metric in paper.NEURALSORT_TABLE1.values() for row in by_metric.values() for n in row})
    for profile in ("cpu", "paper"):
        digits = profile_settings("gps", profile)["digits"]
        assert digits["n_values"] == theirs and len(digits["seeds"]) >= 3
        assert digits["n_digits"] == 4
    assert set(profile_settings("gps", "smoke")["digits"]) == set(profile_settings("gps", "cpu")["digits"])


# ----------------------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: compose_numbers(torch.tensor([10_000]), *p.split("train"), 4, torch.Generator()), "10000"),
        (lambda p: compose_numbers(torch.tensor([1]), *p.split("train"), 0, torch.Generator()), "n_digits"),
        (lambda p: sample_sequences(*p.split("train"), 2, 1, 4, torch.Generator()), "n must.*1"),
        (lambda p: p.split("val"), "'val'"),
        (lambda p: load_digit_pools(test_fraction=1.5), "1.5"),
        (lambda p: DigitSorter(n_digits=4, dim=8)(torch.zeros(1, 3, 8, 8)), r"\(1, 3, 8, 8\)"),
        (lambda p: run_digits_sorting(3, pools=p, **{**TINY, "steps": 0}), "steps=0"),
        (lambda p: run_digits_sorting(3, pools=p, **{**TINY, "n_test": 9}), "n_test=9"),
        (lambda p: run_digits_benchmark({"steps": 1}), "n_values"),
        (lambda p: digits_sorting_table(pd.DataFrame({"n": [3]})), "exact"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(pools, call, match):
    with pytest.raises(ValueError, match=match):
        call(pools)
