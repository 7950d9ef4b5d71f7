"""Properties of gpslib.permutation_learning (paper Section 4.5, Figure 5) and its profile."""

import math

import pytest
import torch

from gpslib.gps import GPSSettings, GumbelPermutationSinkformer
from gpslib.permutation_learning import (
    make_batch,
    permutation_accuracy,
    permutation_loss,
    experiment_runs,
    run_all_experiments,
    run_permutation_learning,
    summarise_seeds,
)
from gpslib.run_profiles import profile_settings
from gpslib.sinkhorn import order_to_perm_matrix

GPS = {"ffn_dim": 32, "num_layers": 2, "sinkhorn_iters": 10}
TINY = {"n_tokens": 6, "dim": 16, "gps": GPS, "progress": False}
COLUMNS = ["step", "loss", "tau", "accuracy", "valid_fraction", "row_error", "eval_accuracy", "eval_exact",
           "eval_kendall_tau"]


def test_history_has_the_documented_columns_and_one_row_per_step():
    df = run_permutation_learning(steps=5, **TINY)
    assert list(df.columns) == COLUMNS
    assert df.step.tolist() == list(range(5))
    assert df.tau.iloc[0] == pytest.approx(2.0) and df.tau.is_monotonic_decreasing
    assert df.eval_accuracy.notna().tolist() == [False] * 4 + [True]
    assert df[COLUMNS[:6]].notna().all().all()


def test_fixed_batch_is_memorised():
    df = run_permutation_learning(steps=60, lr=1e-2, seed=0, **TINY)
    assert df.accuracy.iloc[-1] == 1.0
    assert df.attrs["final_eval_exact"] == 1.0


def test_seeded_runs_are_identical():
    a = run_permutation_learning(steps=4, seed=3, **TINY)
    b = run_permutation_learning(steps=4, seed=3, **TINY)
    assert a.equals(b)


@pytest.fixture(scope="module")
def default_run():
    return run_permutation_learning(steps=4, **{**TINY, "gps": {**GPS, "hard_after": 0.25}})


@pytest.mark.parametrize(
    "overrides",
    [{"gps": {"sinkhorn_impl": "authors", "hard_method": "argmax"}}, {"ce_weight": 0.0, "entropy_weight": 0.0},
     {"gps": {"noise_scale": 0.0}}],
)
def test_each_switch_changes_the_run_and_keeps_its_losses_finite(default_run, overrides):
    gps = {**GPS, "hard_after": 0.25, **overrides.get("gps", {})}
    df = run_permutation_learning(steps=4, **{**TINY, **overrides, "gps": gps})
    assert df.loss.map(math.isfinite).all()
    assert float((df.loss - default_run.loss).abs().max()) > 1e-3  # the switch reached the run
    assert df.attrs["settings"]["gps"] == GPSSettings(**gps).to_dict()


def test_zero_ce_and_entropy_weights_leave_the_mse_alone():
    # MSE of a doubly stochastic (or hard) P against a permutation matrix is at most 2 / N;
    # the cross-entropy term alone would be about log N = 1.8 here
    gps = {**GPS, "hard_after": 0.25}
    df = run_permutation_learning(steps=4, ce_weight=0.0, entropy_weight=0.0, **{**TINY, "gps": gps})
    assert (df.loss <= 2 / TINY["n_tokens"] + 1e-6).all()


def _record_gps_inputs(monkeypatch):
    """Record the tokens GPS sees: with noise (training steps) and without (evaluation)."""
    seen = {"train": [], "eval": []}
    forward = GumbelPermutationSinkformer.forward

    def recording(self, x, *args, noise=True, **kwargs):
        seen["train" if noise else "eval"].append(x.detach().clone())
        return forward(self, x, *args, noise=noise, **kwargs)

    monkeypatch.setattr(GumbelPermutationSinkformer, "forward", recording)
    return seen


@pytest.mark.parametrize("task", ["fixed_perm_fresh_tokens", "sort"])
def test_generalisation_tasks_are_scored_on_one_fixed_held_out_set(task, monkeypatch):
    seen = _record_gps_inputs(monkeypatch)
    df = run_permutation_learning(steps=3, task=task, n_eval=8, eval_every=1, **TINY)
    train, held_out = seen["train"], seen["eval"]
    assert len(train) == 3 and len(held_out) == 3 * 2  # 3 evaluations of 8 // 4 batches
    assert all(torch.equal(a, b) for a, b in zip(held_out, held_out[:2] * 3))  # the same set every time
    assert not any(torch.equal(a, b) for a in held_out for b in train)  # never a training batch
    assert not torch.equal(train[0], train[1])  # fresh tokens every step
    assert df.eval_accuracy.notna().all() and df.attrs["final_eval_exact"] == df.eval_exact.iloc[-1]


def test_fixed_batch_is_scored_on_the_batch_it_memorises(monkeypatch):
    seen = _record_gps_inputs(monkeypatch)
    run_permutation_learning(steps=2, **TINY)
    assert len(seen["eval"]) == 1 and all(torch.equal(seen["eval"][0], x) for x in seen["train"])


def test_sort_targets_sort_the_hidden_scalar_and_fixed_perm_targets_are_shared():
    g = torch.Generator().manual_seed(0)
    tokens, order = make_batch("sort", 3, 7, 16, g)
    assert tokens.shape == (3, 7, 16)
    assert torch.equal(order.sort(-1).values, torch.arange(7).expand(3, 7))  # permutations
    fixed = torch.randperm(7, generator=g)
    _, order = make_batch("fixed_perm_fresh_tokens", 3, 7, 16, g, fixed)
    assert torch.equal(order, fixed.expand(3, 7))


def test_loss_is_minimal_at_the_target_and_terms_switch_off():
    order = torch.tensor([[2, 0, 1]])
    target = order_to_perm_matrix(order)
    assert float(permutation_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 3, 3), 1 / 3)
    # per row (2/3)^2 + 2 (1/3)^2 = 2/3, over 3 entries: 2/9
    assert float(permutation_loss(uniform, target, ce_weight=0, entropy_weight=0)) == pytest.approx(2 / 9, rel=1e-6)
    assert float(permutation_loss(uniform, target, 0, 1, 0)) == pytest.approx(math.log(3), rel=1e-6)  # CE only
    assert float(permutation_loss(uniform, target, 0, 0, 1)) == pytest.approx(math.log(3), rel=1e-6)  # entropy only
    assert float(permutation_loss(uniform, target)) == pytest.approx(2 / 9 + 1.01 * math.log(3), rel=1e-6)
    assert permutation_accuracy(target, order) == (1.0, 1.0, 1.0)


def test_bad_task_and_steps_raise_value_error_naming_the_value():
    with pytest.raises(ValueError, match="'nope'"):
        run_permutation_learning(task="nope", **TINY)
    with pytest.raises(ValueError, match="steps.*0"):
        run_permutation_learning(steps=0, **TINY)


def test_gps_profiles_exist_and_paper_has_the_paper_settings():
    paper = profile_settings("gps", "paper")
    assert (paper["n_tokens"], paper["dim"], paper["ffn_dim"], paper["steps"], paper["batch_size"]) == (
        800, 2048, 8192, 1000, 4)
    assert paper["lr"] == 1e-4 and paper["num_layers"] == 4 and paper["sinkhorn_iters"] == 50
    for name in ("smoke", "cpu"):
        assert set(profile_settings("gps", name)) == set(paper)


def test_every_experiment_runs_for_every_seed_and_equals_its_run_alone():
    s = profile_settings("gps", "smoke")
    s.update(steps=2, gen_steps=2, sort_n_tokens=[5])
    out = run_all_experiments(s, seeds=[0, 1], workers=2)
    names = {"ours", "authors_clamped_sinkhorn", "ce_only", "mse_only", "no_noise", "fixed_perm_fresh_tokens", "sort_n5"}
    assert set(out) == {(name, seed) for name in names for seed in (0, 1)}
    alone = run_permutation_learning(**experiment_runs(s)["sort_n5"], seed=1, progress=False)
    assert out[("sort_n5", 1)].equals(alone)  # a worker process gives what this process gives
    assert not out[("ours", 0)]["loss"].equals(out[("ours", 1)]["loss"])
    summary = summarise_seeds(out, ["ours", "sort_n5"])
    assert summary.loc["ours", "seeds"] == 2 and "Kendall's tau ±" in summary.columns
