"""Table 3 without the order confound (paper Section 4.4): arms of fine-tuning runs, paired intervals, a verdict.

The paper fine-tunes TinyLLaVA with LoRA in the reordered order and compares six metrics
with the original order, one run each. In that protocol the base model was pretrained in
the original order only, so a few LoRA epochs measure the cost of an unfamiliar order as
much as the value of proximity. Here three arms (:data:`ARMS`):

* ``paper_protocol``: the image-first base model (:mod:`gpslib.pretrain`), LoRA in each
  strategy's order, as the paper;
* ``all_layouts``: the mixed base model, which has seen every layout and gap in pretraining,
  so no strategy's order is new to it;
* ``all_layouts_g512``: the same at a position gap of 512, where RoPE distance should matter
  most (:mod:`gpslib.positions`).

Every (arm, strategy, seed) is one :func:`gpslib.finetune.finetune` run, scored by
:func:`gpslib.evaluation.evaluate_run` on the same held-out prompts; runs go to parallel
single-threaded processes (:func:`gpslib.parallel.run_in_processes`). Differences from
``none`` carry a paired bootstrap interval over seeds and prompts
(:func:`gpslib.intervals.paired_bootstrap_difference`: seeds paired by seed, prompts by
prompt); :func:`gps_seed_table` reports GPS per seed (diverged: validation loss above 1.5x
that of ``none`` with the same seed) and :func:`table3_verdict` writes the conclusion.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gpslib.evaluation import evaluate_run
from gpslib.finetune import FinetuneConfig, base_model_source, config_for_profile, finetune, run_dir_for
from gpslib.intervals import mean_ci, paired_bootstrap_difference
from gpslib.parallel import run_in_processes
from gpslib.run_profiles import profile_settings

__all__ = ["ARMS", "DIVERGENCE_FACTOR", "STRATEGY_SETTINGS", "table3_jobs", "run_table3", "metric_summary", "differences",
           "gps_seed_table", "table3_verdict"]

# arm -> the run settings it fixes
ARMS: dict[str, dict[str, Any]] = {
    "paper_protocol": {"base": "image_first", "position_gap": 0},
    "all_layouts": {"base": "mixed", "position_gap": 0},
    "all_layouts_g512": {"base": "mixed", "position_gap": 512},
}
DIVERGENCE_FACTOR = 1.5  # a GPS run diverged when its validation loss exceeds this times none's (same seed)
# strategies that are a reorder value with settings of their own (any other strategy name is a reorder value):
# "gps_alpha0.5" is GPS with the authors' identity scale, the setting that diverged (finetune profile's comment)
STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {"gps_alpha0.5": {"reorder": "gps", "gps": {"alpha": 0.5}}}


def table3_jobs(profile: str, root: str | os.PathLike) -> list[tuple[str, str, int, FinetuneConfig, Path]]:
    """Every run of the profile's Table 3: (arm, strategy, seed, config, run directory).

    The ``"table3"`` profile section names each arm's strategies with their seeds; the runs'
    other settings are the ``"finetune"`` section's.
    """
    plan = profile_settings("table3", profile)
    jobs = []
    for arm, strategies in plan["arms"].items():
        if arm not in ARMS:
            raise ValueError(f"unknown Table 3 arm {arm!r}; valid arms are {list(ARMS)}")
        for strategy, seeds in strategies.items():
            for seed in seeds:
                settings = STRATEGY_SETTINGS.get(strategy, {"reorder": strategy})
                config = config_for_profile(profile, seed=seed, **ARMS[arm], **settings)
                jobs.append((arm, strategy, seed, config, run_dir_for(config, root, f"table3-{arm}-{strategy}-seed{seed}")))
    return jobs


def _run(job: tuple[FinetuneConfig, str, int]) -> dict:
    config, run_dir, n = job
    finetune(config, run_dir, progress=False)
    return evaluate_run(run_dir, num_samples=n)


def run_table3(profile: str, root: str | os.PathLike, workers: int | None = None) -> dict[tuple[str, str, int], dict]:
    """Train (or reuse) and evaluate every run of Table 3; returns (arm, strategy, seed) -> evaluate_run's result.

    The base models are built first, here, so that the worker processes only read them.
    """
    jobs = table3_jobs(profile, root)
    for base in sorted({config.base for _, _, _, config, _ in jobs}):
        base_model_source(next(c for *_, c, _ in jobs if c.base == base))
    n = profile_settings("table3", profile)["eval_prompts"]
    results = run_in_processes(_run, [(config, str(run_dir), n) for *_, config, run_dir in jobs], workers)
    return {(arm, strategy, seed): result for (arm, strategy, seed, _, _), result in zip(jobs, results)}


def metric_summary(results: dict[tuple[str, str, int], dict], metrics: Sequence[str]) -> pd.DataFrame:
    """Per arm, strategy and metric: mean over seeds, Student-t 95% half-width, n seeds, the values."""
    rows = []
    for arm, strategy in dict.fromkeys((a, s) for a, s, _ in results):
        seeds = sorted(k for a, s, k in results if (a, s) == (arm, strategy))
        for metric in metrics:
            values = [results[(arm, strategy, k)]["metrics"][metric] for k in seeds]
            mean, half = mean_ci(values)
            rows.append({"arm": arm, "strategy": strategy, "metric": metric, "mean": mean, "ci95": half,
                         "n": len(values), "values": values})
    return pd.DataFrame(rows)


# the per-prompt column behind each metric (sacrebleu is corpus-level only)
_PER_PROMPT = {"val_loss": "nll", "accuracy": "correct", "bleu": "bleu", "bertscore_f1": "bertscore_f1",
               "meteor": "meteor", "cider": "cider", "rouge_l": "rouge_l"}


def differences(results: dict[tuple[str, str, int], dict], metrics: Sequence[str], n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    """Each strategy minus ``none`` in its arm, per metric, with a paired bootstrap interval over seeds and prompts.

    The seeds both strategies ran are paired (same seed: same data order and LoRA
    initialisation), and so are the prompts. Columns: arm, strategy, metric, difference,
    ci_low, ci_high, seeds, beyond_interval (the interval excludes zero). Metrics without
    per-prompt scores (sacrebleu) are left out.
    """
    rows = []
    for arm, strategy in dict.fromkeys((a, s) for a, s, _ in results):
        if strategy == "none" or not any((arm, "none", k) in results for _, _, k in results):
            continue
        seeds = sorted(k for a, s, k in results if (a, s) == (arm, strategy) and (arm, "none", k) in results)
        for metric in metrics:
            column = _PER_PROMPT.get(metric)
            if column is None or not seeds:
                continue
            a = np.array([results[(arm, strategy, k)]["per_prompt"][column] for k in seeds], dtype=float)
            b = np.array([results[(arm, "none", k)]["per_prompt"][column] for k in seeds], dtype=float)
            keep = ~(np.isnan(a).any(0) | np.isnan(b).any(0))
            if not keep.any():
                continue
            diff, low, high = paired_bootstrap_difference(a[:, keep], b[:, keep], n_boot=n_boot, seed=seed)
            rows.append({"arm": arm, "strategy": strategy, "metric": metric, "difference": diff, "ci_low": low,
                         "ci_high": high, "seeds": len(seeds), "beyond_interval": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows)


def gps_seed_table(results: dict[tuple[str, str, int], dict]) -> pd.DataFrame:
    """GPS per arm, strategy (``gps`` and its variants of :data:`STRATEGY_SETTINGS`) and seed: its
    validation loss, none's with the same seed, and whether it diverged."""
    rows = []
    for arm, strategy, seed in results:
        is_gps = strategy == "gps" or STRATEGY_SETTINGS.get(strategy, {}).get("reorder") == "gps"
        if not is_gps or (arm, "none", seed) not in results:
            continue
        gps, none = (results[(arm, s, seed)]["metrics"]["val_loss"] for s in (strategy, "none"))
        rows.append({"arm": arm, "strategy": strategy, "seed": seed, "val_loss_gps": gps, "val_loss_none": none,
                     "diverged": bool(not math.isfinite(gps) or gps > DIVERGENCE_FACTOR * none)})
    return pd.DataFrame(rows, columns=["arm", "strategy", "seed", "val_loss_gps", "val_loss_none", "diverged"])


def table3_verdict(diffs: pd.DataFrame) -> str:
    """Sentences from :func:`differences`: per arm and strategy, which metrics moved beyond their interval."""
    lines = []
    better = {"val_loss": -1}  # lower is better; every other metric: higher is better
    for (arm, strategy), part in diffs.groupby(["arm", "strategy"], sort=False):
        real = part[part["beyond_interval"]]
        if not len(real):
            lines.append(f"{arm}, {strategy} vs none: no difference beyond its interval "
                         f"({len(part)} metrics, {int(part['seeds'].iloc[0])} seeds).")
            continue
        words = []
        for _, r in real.iterrows():
            good = r["difference"] * better.get(r["metric"], 1) > 0
            words.append(f"{r['metric']} {r['difference']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                         f"({'better' if good else 'worse'})")
        lines.append(f"{arm}, {strategy} vs none: " + "; ".join(words) + ".")
    return "\n".join(lines)
