"""The trials that looked for a base model that sees, as a record notebook 00 reads.

The embedded base model of the ``cpu`` profile answered 45-51% of ShapesVQA test questions,
with shape at chance and existence and relation at one constant answer, where the goal was
at least 0.70 overall and every question type 15 points above its chance
(:func:`gpslib.evaluation.accuracy_goal`). Trials changed one thing at a time (the vision
learning-rate split, patch-label pre-training of the vision tower, the question-type mix,
depth, width, answer formats, training phases, image-level
labels for the vision tower, and last the answer grounding loss of :mod:`gpslib.answer_grounding`,
which ended the search) and scored each model on the same 600 test questions; :data:`TRIALS_CSV` holds one row per trial: its name, its settings
(JSON), accuracy per question type and overall, times, the load average of the machine, and
the commit and script that ran it. The trials ran before the recipe they chose entered
:mod:`gpslib.pretrain` (``vision_steps``, ``question_mix``, ``grounding_loss``), so their script is not this
package's; :func:`run_trial` reruns any trial that :class:`gpslib.pretrain.PretrainConfig`
can express (``benchmarks/base_model_trials.py``) and appends it to the record.

:func:`what_changed` describes each trial by its settings' difference from the baseline and
:func:`trial_findings` says, from the numbers, which question types each change moved;
:func:`over_seeds` shows one recipe's reruns with other seeds against a goal per type
(:func:`recipes_over_seeds`: several recipes in one table).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from gpslib.atomic_files import atomic_write_text
from gpslib.evaluation import accuracy_table
from gpslib.generation import predict
from gpslib.model import load_model
from gpslib.pretrain import PretrainConfig, embedded_cache_dir, pretrain, train_settings
from gpslib.records import records_dir
from gpslib.shapes_vqa import SHORT_ANSWER_TYPES, shapes_vqa

__all__ = ["TRIALS_CSV", "load_trials", "baselines", "what_changed", "trial_findings", "over_seeds", "recipes_over_seeds",
           "run_trial"]

TRIALS_CSV = "base_model_trials.csv"
COLUMNS = [*SHORT_ANSWER_TYPES, "all"]


def load_trials(path: str | Path | None = None) -> pd.DataFrame:
    """The trials record (default ``<repo>/records/base_model_trials.csv``), one row per trial."""
    path = Path(path) if path is not None else records_dir() / TRIALS_CSV
    if not path.exists():
        raise FileNotFoundError(f"no trials record at {path}")
    trials = pd.read_csv(path)
    missing = [c for c in ["trial", "settings", *COLUMNS] if c not in trials.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    repeated = sorted(set(trials["trial"][trials["trial"].duplicated()]))
    if repeated:
        raise ValueError(f"{path} holds the trials {repeated} more than once; each name must be unique")
    return trials


def baselines(trials: pd.DataFrame, baseline: str = "baseline") -> pd.Series:
    """Per trial, the name of the trial it is compared with.

    The trial a row names in its optional ``baseline`` column; else the trial named ``baseline``
    (or ``<prefix>-baseline``, as the reruns of ``benchmarks/base_model_trials.py`` are named)
    run by the same script: trials of different scripts name their settings differently and ran
    different code. Where a script has no baseline, the first one. ValueError if there is none
    at all, or if a row names a trial the record does not hold.
    """
    scripts = trials["script"] if "script" in trials else pd.Series([None] * len(trials), index=trials.index)
    is_base = trials["trial"].astype(str).map(lambda t: t == baseline or t.endswith("-" + baseline))
    if not is_base.any():
        raise ValueError(f"no trial named {baseline!r}; trials are {list(trials['trial'])}")
    per_script = {}
    for name, script in zip(trials["trial"][is_base], scripts[is_base]):
        per_script.setdefault(script, name)
    first = next(iter(per_script.values()))
    named = trials["baseline"] if "baseline" in trials else pd.Series([None] * len(trials), index=trials.index)
    out = []
    for trial, script, own in zip(trials["trial"], scripts, named):
        if isinstance(own, str) and own:
            if own not in set(trials["trial"]):
                raise ValueError(f"trial {trial!r} names the baseline {own!r}, which the record does not hold")
            out.append(own)
        else:
            out.append(per_script.get(script, first))
    return pd.Series(out, index=trials["trial"], name="baseline")


def what_changed(trials: pd.DataFrame, baseline: str = "baseline") -> pd.Series:
    """Per trial, the settings that differ from its baseline's (:func:`baselines`), ``"key: old -> new"``
    joined by ``; ``.

    A setting absent from one trial and None, False or 0 in the other counts as unchanged (a trial
    script that gained a switch records its off value only from then on).
    """
    settings = dict(zip(trials["trial"], trials["settings"].map(json.loads)))
    out = {}
    for name, base_name in baselines(trials, baseline).items():
        base, values = settings[base_name], settings[name]
        keys = sorted(set(base) | set(values))
        diffs = [f"{k}: {base.get(k)} -> {values.get(k)}" for k in keys
                 if base.get(k) != values.get(k) and (base.get(k) or values.get(k))]  # None, False, 0 alike
        out[name] = "; ".join(diffs) if diffs else "(the baseline)"
    return pd.Series(out, name="what_changed")


def trial_findings(trials: pd.DataFrame, baseline: str = "baseline", threshold: float = 0.05) -> list[str]:
    """One sentence per trial: the question types whose accuracy moved by at least ``threshold`` from
    its baseline's (:func:`baselines`)."""
    table = trials.set_index("trial")
    sentences = []
    for name, base_name in baselines(trials, baseline).items():
        if name == base_name:
            continue
        row, base = table.loc[name], table.loc[base_name]
        moved = [(t, float(row[t] - base[t])) for t in SHORT_ANSWER_TYPES if abs(row[t] - base[t]) >= threshold]
        parts = ", ".join(f"{t} {d:+.2f}" for t, d in moved) or f"no type moved by {threshold:.2f} or more"
        sentences.append(f"{name} (against {base_name}): overall {row['all'] - base['all']:+.2f} ({parts}).")
    return sentences


def over_seeds(trials: pd.DataFrame, name: str, goal: pd.Series) -> pd.DataFrame:
    """One recipe over seeds: the trial ``name`` (seed 0) and its reruns ``name-seed<N>``, per question type.

    Returns a frame indexed by the question types and ``all`` with a column ``seed <N>`` per
    seed (from each row's settings), ``min`` over the seeds, ``goal`` (``goal``'s value per
    type, e.g. :func:`gpslib.evaluation.goal_accuracies`) and ``every seed meets goal``.
    ValueError if the record holds no such trial, two of them share a seed, or ``goal`` lacks a type.
    """
    prefix = name + "-seed"
    rows = trials[trials["trial"].astype(str).map(lambda t: t == name or (
        t.startswith(prefix) and t[len(prefix):].isdigit()))]
    if rows.empty:
        raise ValueError(f"the record holds no trial {name!r} or {name + '-seed<N>'!r}")
    missing = [t for t in COLUMNS if t not in goal.index]
    if missing:
        raise ValueError(f"goal lacks the question types {missing}")
    seeds = rows["settings"].map(lambda s: json.loads(s).get("seed", 0))
    if seeds.duplicated().any():
        raise ValueError(f"the trials {list(rows['trial'])} of {name!r} repeat a seed: {list(seeds)}")
    table = pd.DataFrame({f"seed {seed}": row[COLUMNS].astype(float).to_numpy()
                          for seed, (_, row) in sorted(zip(seeds, rows.iterrows()), key=lambda x: x[0])},
                         index=COLUMNS)
    table["min"] = table.min(axis=1)
    table["goal"] = goal.reindex(COLUMNS).astype(float)
    table["every seed meets goal"] = table["min"] >= table["goal"]
    return table


def recipes_over_seeds(trials: pd.DataFrame, names: list[str], goal: pd.Series) -> pd.DataFrame:
    """:func:`over_seeds` of each recipe in ``names``, one frame indexed by (recipe, question type).

    The seed columns come first in seed order (a recipe without a seed has NaN there), then
    ``min``, ``goal`` and ``every seed meets goal``.
    """
    if not names:
        raise ValueError("names must list at least one recipe; got []")
    table = pd.concat({name: over_seeds(trials, name, goal) for name in names}, names=["recipe", "question type"])
    seeds = sorted((c for c in table.columns if c.startswith("seed ")), key=lambda c: int(c.split()[1]))
    return table[[*seeds, "min", "goal", "every seed meets goal"]]


def run_trial(name: str, overrides: dict[str, Any], profile: str = "cpu", seed: int = 0, eval_samples: int = 600,
              batch_size: int = 100, record: str | Path | None = None, progress: bool = True,
              commit: str = "unknown") -> dict[str, Any]:
    """Train ``profile``'s image-first base model with ``overrides`` (PretrainConfig fields), score it, record it.

    The model is cached like any base model (:func:`gpslib.pretrain.embedded_cache_dir`; ``wall_seconds``
    is its training time, from its ``train_info.json``, and ``cached`` says it was not trained by
    this call; ``load_average`` is the machine's at the end); it is
    scored on the first ``eval_samples`` short-answer ShapesVQA test questions (greedy, 20 new tokens, as notebook 00) and
    the row is appended to ``record`` (default :data:`TRIALS_CSV`, written atomically) with
    ``commit``, the caller's name for the code that ran it. Returns the row. Raises ValueError naming a bad override
    or a name the record already holds (before any training).
    """
    settings = train_settings(profile, "image_first")
    if "model" in settings:
        raise ValueError(f"profile {profile!r} loads the hub model {settings['model']!r}; it has no trials")
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown PretrainConfig fields {unknown}; valid ones are {sorted(fields)}")
    config = PretrainConfig(**{**settings, **overrides}).validate()
    out = Path(record) if record is not None else records_dir() / TRIALS_CSV
    if out.exists() and name in set(pd.read_csv(out)["trial"]):
        raise ValueError(f"the record {out} already holds a trial named {name!r}; give the rerun another name")
    path = embedded_cache_dir(seed, dataclasses.asdict(config))
    start = time.perf_counter()
    if not (path / "train_info.json").exists():
        pretrain(config, seed=seed, progress=progress)
    wall = time.perf_counter() - start
    info = json.loads((path / "train_info.json").read_text())
    model, processor = load_model(path)
    test = shapes_vqa(eval_samples, seed=0, split="test", image_size=model.config.vision_config.image_size,
                      question_types=SHORT_ANSWER_TYPES)
    accuracy = accuracy_table(predict(model, processor, test, batch_size, 20))["accuracy"]
    row = {"trial": name, "settings": json.dumps({**dataclasses.asdict(config), "seed": seed}, sort_keys=True),
           **{t: round(float(accuracy.get(t, math.nan)), 4) for t in COLUMNS}, "n_test": eval_samples,
           "parameters": info["parameters"], "vision_seconds": info.get("vision_seconds", 0.0),
           "train_seconds": info["seconds"], "wall_seconds": round(info.get("total_seconds", info["seconds"]), 1),
           "cached": wall < 0.5 * info.get("total_seconds", info["seconds"]), "load_average": os.getloadavg()[0],
           "threads": info["torch_threads"], "commit": commit, "script": "benchmarks/base_model_trials.py"}
    old = pd.read_csv(out) if out.exists() else pd.DataFrame()
    atomic_write_text(out, pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_csv(index=False))
    return row
