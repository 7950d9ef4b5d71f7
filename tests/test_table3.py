"""Properties of gpslib.table3 (Table 3's arms, paired intervals, GPS per seed, verdict) and gpslib.parallel."""

import math
import os

import numpy as np
import pytest

from gpslib import table3
from gpslib.parallel import default_workers, run_in_processes


def _result(val_loss, nll, correct, bleu):
    return {"metrics": {"val_loss": val_loss, "bleu": float(np.mean(bleu)), "accuracy": float(np.mean(correct))},
            "per_prompt": {"nll": list(nll), "correct": list(correct), "bleu": list(bleu)}}


def _results(shift, seeds=(0, 1, 2), n=300, gps_losses=None):
    rng = np.random.default_rng(0)
    out = {}
    for seed in seeds:
        base_nll, base_bleu = rng.random(n) + 0.5, rng.random(n)
        correct = (rng.random(n) < 0.6).astype(float)
        out[("arm", "none", seed)] = _result(float(base_nll.mean()), base_nll, correct, base_bleu)
        out[("arm", "oracle", seed)] = _result(float(base_nll.mean() - shift), base_nll - shift, correct,
                                               base_bleu + shift)
        if gps_losses is not None:
            out[("arm", "gps", seed)] = _result(gps_losses[seed], base_nll, correct, base_bleu)
    return out


def test_jobs_cover_every_arm_strategy_and_seed_of_the_profile(tmp_path):
    jobs = table3.table3_jobs("cpu", tmp_path)
    plan = table3.profile_settings("table3", "cpu")
    expected = {(arm, s, k) for arm, strategies in plan["arms"].items() for s, seeds in strategies.items() for k in seeds}
    assert {j[:3] for j in jobs} == expected and len(jobs) == len(expected)
    for arm, strategy, seed, config, run_dir in jobs:
        assert (config.base, config.position_gap) == (table3.ARMS[arm]["base"], table3.ARMS[arm]["position_gap"])
        settings = table3.STRATEGY_SETTINGS.get(strategy, {"reorder": strategy})
        assert (config.reorder, config.seed) == (settings["reorder"], seed) and run_dir.parent == tmp_path
        gps_alpha = 0.5 if strategy == "gps_alpha0.5" else table3.profile_settings("finetune", "cpu")["gps"]["alpha"]
        assert config.gps["alpha"] == gps_alpha
    assert len({j[4] for j in jobs}) == len(jobs)  # one directory per run
    assert {s for _, s, *_ in jobs} >= {"gps", "gps_alpha0.5"}


def test_gps_seed_table_reports_each_gps_strategy_against_none_of_the_same_seed():
    results = {("paper_protocol", s, k): {"metrics": {"val_loss": v}} for s, k, v in [
        ("none", 0, 0.2), ("none", 1, 0.2), ("gps", 0, 0.25), ("gps", 1, 0.31), ("gps_alpha0.5", 0, 1.4),
        ("cosine", 0, 9.0)]}
    table = table3.gps_seed_table(results)
    assert table[["strategy", "seed", "diverged"]].values.tolist() == [
        ["gps", 0, False], ["gps", 1, True], ["gps_alpha0.5", 0, True]]


def test_a_real_shift_is_beyond_its_interval_and_no_shift_is_not():
    diffs = table3.differences(_results(0.05), ["val_loss", "bleu", "sacrebleu"], n_boot=300)
    assert set(diffs["metric"]) == {"val_loss", "bleu"}  # sacrebleu has no per-prompt scores
    row = diffs.set_index("metric").loc["val_loss"]
    assert row["difference"] == pytest.approx(-0.05) and row["ci_high"] < 0 and row["beyond_interval"]
    none = table3.differences(_results(0.0), ["val_loss"], n_boot=300)
    assert not none["beyond_interval"].any()
    text = table3.table3_verdict(diffs)
    assert "val_loss -0.0500" in text and "(better)" in text and "bleu +0.0500" in text


def test_gps_seeds_are_diverged_above_one_and_a_half_times_none():
    results = _results(0.0, gps_losses={0: 1.0, 1: 5.0, 2: math.nan})
    table = table3.gps_seed_table(results).set_index("seed")
    assert 0.9 < table.loc[0, "val_loss_none"] < 1.1  # none's loss is about 1 on every seed
    assert not table.loc[0, "diverged"] and table.loc[1, "diverged"]
    assert table.loc[2, "diverged"]  # a NaN loss diverged


def test_summary_gives_the_t_interval_over_seeds():
    summary = table3.metric_summary(_results(0.05), ["val_loss"]).set_index("strategy")
    assert summary.loc["none", "n"] == 3 and summary.loc["none", "ci95"] > 0


def _square(x):
    return x * x


def test_parallel_runs_give_the_sequential_results_in_order():
    assert run_in_processes(_square, [3, 1, 2], workers=2) == [9, 1, 4]
    assert run_in_processes(_square, [5], workers=4) == [25]


def test_bad_worker_counts_are_named(monkeypatch):
    with pytest.raises(ValueError, match="workers=0"):
        run_in_processes(_square, [1], workers=0)
    monkeypatch.setenv("GPSLIB_WORKERS", "two")
    with pytest.raises(ValueError, match="'two'"):
        default_workers()
    monkeypatch.setenv("GPSLIB_WORKERS", "3")
    assert default_workers() == 3
