"""gpslib.base_model_trials: the trials record notebook 00 reads, and benchmarks/base_model_trials.py (smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gpslib.base_model_trials import (COLUMNS, baselines, load_trials, over_seeds, recipes_over_seeds, run_trial,
                                      trial_findings, what_changed)
from gpslib.pretrain import train_settings

ROOT = Path(__file__).resolve().parents[1]


def _record(tmp_path):
    rows = [{"trial": "baseline", "settings": json.dumps({"steps": 2000, "vision_steps": 0}),
             **{t: 0.5 for t in COLUMNS}},
            {"trial": "seeing", "settings": json.dumps({"steps": 2000, "vision_steps": 1000, "echo": False}),
             **{t: 0.5 for t in COLUMNS}, "shape": 0.9, "count": 0.47, "all": 0.6}]
    path = tmp_path / "trials.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_committed_record_has_a_baseline_and_every_type_for_every_trial():
    trials = load_trials()
    assert "baseline" in set(trials["trial"]) and trials[COLUMNS].notna().all().all()
    assert trials[COLUMNS].apply(lambda c: c.between(0, 1)).all().all()
    assert trials["commit"].notna().all() and trials["script"].notna().all()


def test_what_changed_names_only_the_settings_that_differ_from_the_baseline(tmp_path):
    changed = what_changed(load_trials(_record(tmp_path)))
    assert changed["baseline"] == "(the baseline)" and changed["seeing"] == "vision_steps: 0 -> 1000"


def test_findings_name_the_types_that_moved_by_the_threshold_and_their_sign(tmp_path):
    findings = trial_findings(load_trials(_record(tmp_path)), threshold=0.05)
    assert findings == ["seeing (against baseline): overall +0.10 (shape +0.40)."]
    assert "no type moved" in trial_findings(load_trials(_record(tmp_path)), threshold=0.5)[0]


def test_each_script_is_compared_with_its_own_baseline(tmp_path):
    trials = load_trials(_record(tmp_path)).assign(script="old")
    rerun = trials.assign(script="new", trial=["rerun-baseline", "rerun-seeing"],
                          settings=[json.dumps({"vision_steps": 0}), json.dumps({"vision_steps": 9})])
    both = pd.concat([trials, rerun], ignore_index=True)
    assert baselines(both).tolist() == ["baseline", "baseline", "rerun-baseline", "rerun-baseline"]
    assert what_changed(both)["rerun-seeing"] == "vision_steps: 0 -> 9"
    assert trial_findings(both)[1].startswith("rerun-seeing (against rerun-baseline): overall +0.10")


def test_a_row_that_names_its_baseline_is_compared_with_that_trial(tmp_path):
    trials = load_trials(_record(tmp_path)).assign(script="old", baseline=None)
    scratch = trials.assign(script="scratch", trial=["deeper", "deeper-seed1"], baseline=["seeing", "deeper"],
                            settings=[json.dumps({"steps": 2000, "vision_steps": 1000, "text_layers": 3})] * 2)
    both = pd.concat([trials, scratch], ignore_index=True)
    assert baselines(both).tolist() == ["baseline", "baseline", "seeing", "deeper"]
    assert what_changed(both)["deeper"] == "text_layers: None -> 3"
    with pytest.raises(ValueError, match="'nowhere'"):
        baselines(both.assign(baseline=[None, None, "nowhere", None]))


def test_over_seeds_takes_the_minimum_per_type_and_says_whether_every_seed_meets_the_goal(tmp_path):
    trials = load_trials(_record(tmp_path))
    reruns = pd.DataFrame([{"trial": f"seeing-seed{s}", "settings": json.dumps({"vision_steps": 1000, "seed": s}),
                            **{t: 0.5 for t in COLUMNS}, "shape": shape, "all": 0.6}
                           for s, shape in [(2, 0.7), (1, 0.85)]])
    both = pd.concat([trials, reruns, trials.assign(trial=["x", "seeing_other"])], ignore_index=True)
    goal = pd.Series(0.55, index=COLUMNS).rename("goal")
    goal["shape"] = 0.8
    table = over_seeds(both, "seeing", goal)
    assert list(table.columns) == ["seed 0", "seed 1", "seed 2", "min", "goal", "every seed meets goal"]
    assert table.loc["shape", ["seed 0", "seed 1", "seed 2", "min"]].tolist() == [0.9, 0.85, 0.7, 0.7]
    assert not table.loc["shape", "every seed meets goal"] and table.loc["all", "every seed meets goal"]
    assert not table.loc["count", "every seed meets goal"]  # 0.47 on seed 0
    with pytest.raises(ValueError, match="'nothing'"):
        over_seeds(both, "nothing", goal)
    with pytest.raises(ValueError, match="count"):
        over_seeds(both, "seeing", goal.drop("count"))
    twice = pd.concat([both, reruns.assign(trial="seeing-seed9")], ignore_index=True)
    with pytest.raises(ValueError, match="repeat a seed"):
        over_seeds(twice, "seeing", goal)
    # several recipes: the seeds in order whichever recipe has them, NaN where a recipe lacks one
    other = reruns.assign(trial=["other-seed3", "other"], settings=[json.dumps({"seed": 3}), json.dumps({})])
    both = pd.concat([both, other], ignore_index=True)
    table = recipes_over_seeds(both, ["other", "seeing"], goal)
    assert list(table.columns) == ["seed 0", "seed 1", "seed 2", "seed 3", "min", "goal", "every seed meets goal"]
    assert table.loc[("other", "shape"), "min"] == 0.7 and pd.isna(table.loc[("other", "shape"), "seed 1"])
    assert table.loc["seeing"].equals(over_seeds(both, "seeing", goal).reindex(columns=table.columns))
    with pytest.raises(ValueError, match=r"\[\]"):
        recipes_over_seeds(both, [], goal)


def test_bad_inputs_get_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_trials(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match="'base'"):
        what_changed(load_trials(_record(tmp_path)), baseline="base")
    with pytest.raises(ValueError, match="vision_step"):
        run_trial("x", {"vision_step": 3}, profile="smoke", record=tmp_path / "r.csv")
    with pytest.raises(ValueError, match="'paper'"):
        run_trial("x", {}, profile="paper", record=tmp_path / "r.csv")


def test_a_trial_name_is_unique_in_the_record_and_a_rerun_under_a_taken_name_is_refused_before_training(tmp_path):
    path = _record(tmp_path)
    with pytest.raises(ValueError, match="already holds a trial named 'seeing'"):
        run_trial("seeing", {}, profile="smoke", record=path)  # raises before any training: no cache is written
    twice = pd.concat([pd.read_csv(path)] * 2)
    twice.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\['baseline', 'seeing'\] more than once"):
        load_trials(path)


@pytest.mark.slow
def test_the_smoke_script_trains_scores_and_appends_its_trials(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPSLIB_CACHE": str(tmp_path / "cache")}
    record = tmp_path / "trials.csv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "base_model_trials.py"), "--smoke",
                           "--trials", "baseline,recipe", "--record", str(record)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load_trials(record)
    assert trials["trial"].tolist() == ["rerun-baseline-smoke", "rerun-recipe-smoke"]
    assert json.loads(trials["settings"][1])["question_mix"] == "1,2,1,1,2,2,1" and trials["n_test"].tolist() == [16, 16]
    assert what_changed(trials, baseline="baseline-smoke")["rerun-recipe-smoke"] == (
        "question_mix: uniform -> 1,2,1,1,2,2,1; vision_steps: 0 -> 2")


def test_every_scripted_trial_states_the_settings_the_profile_has_moved_so_a_rerun_repeats_what_ran():
    # the cpu profile's recipe moved (grounding_loss 0 -> 0.1, steps 2000 -> 3000, question_mix): a trial that
    # left one of them to the profile would rerun with today's value, not the one it ran with
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import base_model_trials as script
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    moved = {"steps", "grounding_loss", "question_mix", "vision_steps"}
    assert {name: sorted(moved - set(overrides)) for name, overrides in script.TRIALS.items()} == {
        name: [] for name in script.TRIALS}
    profile = train_settings("cpu", "image_first")  # position_3000 is the cpu profile's recipe, as its docstring says
    assert {k: profile[k] for k in script.TRIALS["position_3000"]} == script.TRIALS["position_3000"]
