"""Why some GPS fine-tuning seeds diverge (paper Section 4.4, Table 3's gps row).

A GPS run diverged when its best validation loss exceeds :data:`gpslib.table3.DIVERGENCE_FACTOR`
(1.5) times that of ``"none"`` trained with the same seed and base model. Each
:class:`Variant` changes one or two things against main's defaults (the GPS settings of
:class:`gpslib.gps.GPSSettings`, the run settings of :class:`gpslib.finetune.FinetuneConfig`,
or the Sinkformer's initialisation); :func:`run_divergence_grid` trains every variant x seed
with :func:`gpslib.finetune.finetune` in parallel processes (:mod:`gpslib.parallel`), beside
one ``"none"`` run per seed and base model, and :func:`divergence_table` turns the best
validation losses into the table ``benchmarks/gps_divergence_causes.py`` writes as
:data:`CSV` (columns :data:`COLUMNS`) with :data:`PROVENANCE_JSON` beside it.
:func:`load_divergence_causes` reads the committed copy in ``records/``,
:func:`divergence_summary` counts per variant, and :func:`divergence_sentence` names the
variants that diverged (notebook 05).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from unittest import mock

import pandas as pd

from gpslib import finetune as ft
from gpslib.parallel import run_in_processes
from gpslib.records import records_dir
from gpslib.table3 import DIVERGENCE_FACTOR

__all__ = ["CSV", "PROVENANCE_JSON", "COLUMNS", "Variant", "VARIANTS", "SMOKE_VARIANTS", "divergence_jobs",
           "run_divergence_grid", "divergence_table", "load_divergence_causes", "divergence_summary",
           "divergence_sentence"]

CSV = "gps_divergence_causes.csv"
PROVENANCE_JSON = "gps_divergence_causes_provenance.json"
COLUMNS = ["variant", "what_changed", "seed", "val_loss_gps", "val_loss_none", "ratio", "diverged"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change against main's defaults: ``gps`` (GPSSettings fields), ``finetune``
    (FinetuneConfig fields) and ``reinit_gps`` (Xavier-initialise the Sinkformer after loading
    the base model, as its own constructor does, instead of the near-identity that
    ``from_pretrained`` gives the weights the base model lacks)."""

    name: str
    what_changed: str
    gps: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    finetune: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reinit_gps: bool = False

    def none_settings(self) -> dict[str, Any]:
        """The run settings of the ``"none"`` run it is compared with (those ``"none"`` reads)."""
        return {k: v for k, v in self.finetune.items() if k != "gps_learning_rate"}

    def reference(self) -> str:
        """The name of those ``"none"`` runs: ``"none"``, or ``"none-<values>"`` (``"none-mixed"``)."""
        return "-".join(["none", *map(str, self.none_settings().values())])


# the variants of the measured record (the gpsstable branch's scratch/jobs_*.txt), by the same names; each
# sets alpha (merged into the fine-tuning profile's GPS settings, whose alpha is 10 since that record)
VARIANTS: tuple[Variant, ...] = (
    Variant("base", "the authors' GPS settings (alpha 0.5), image-first base model", gps={"alpha": 0.5}),
    Variant("st0", "hard (straight-through) permutation from step 0 (hard_after 0)", gps={"alpha": 0.5, "hard_after": 0.0}),
    Variant("st0n01", "hard from step 0, Gumbel noise scale 0.1 (hard_after 0, noise_scale 0.1)",
            gps={"alpha": 0.5, "hard_after": 0.0, "noise_scale": 0.1}),
    Variant("xavier", "Sinkformer Xavier-initialised after loading, away from the identity", gps={"alpha": 0.5},
            reinit_gps=True),
    Variant("a10", "identity scale of the residual permutation alpha 10 (default 0.5)", gps={"alpha": 10.0}),
    Variant("glr3e-4", "Sinkformer learning rate 3e-4 (LoRA's 1e-4)", gps={"alpha": 0.5},
            finetune={"gps_learning_rate": 3e-4}),
    Variant("glr1e-3", "Sinkformer learning rate 1e-3 (LoRA's 1e-4)", gps={"alpha": 0.5},
            finetune={"gps_learning_rate": 1e-3}),
    Variant("glr3e-3", "Sinkformer learning rate 3e-3 (LoRA's 1e-4)", gps={"alpha": 0.5},
            finetune={"gps_learning_rate": 3e-3}),
    Variant("a10glr1e-3", "alpha 10 and Sinkformer learning rate 1e-3", gps={"alpha": 10.0},
            finetune={"gps_learning_rate": 1e-3}),
    Variant("mixed-base", "mixed base model (pretrained on every layout)", gps={"alpha": 0.5},
            finetune={"base": "mixed"}),
    Variant("mixed-glr1e-3", "mixed base model and Sinkformer learning rate 1e-3",
            gps={"alpha": 0.5}, finetune={"base": "mixed", "gps_learning_rate": 1e-3}),
    Variant("mixed-a10", "mixed base model and alpha 10", gps={"alpha": 10.0}, finetune={"base": "mixed"}),
    Variant("mixed-a10glr1e-3", "mixed base model, alpha 10 and Sinkformer learning rate 1e-3",
            gps={"alpha": 10.0}, finetune={"base": "mixed", "gps_learning_rate": 1e-3}),
)
SMOKE_VARIANTS = ("base", "st0n01", "xavier")  # the --smoke grid: one each of GPS settings, init, defaults


def divergence_jobs(profile: str, root: str | os.PathLike, variants: Sequence[Variant],
                    seeds: Sequence[int]) -> list[tuple[str, int, ft.FinetuneConfig, Path, bool]]:
    """Every run of the grid: (name, seed, config, run directory, reinit_gps).

    ``name`` is a variant's, or its :meth:`Variant.reference` for the ``"none"`` runs (one per
    seed and distinct :meth:`Variant.none_settings`).
    """
    jobs, refs = [], {v.reference(): v.none_settings() for v in variants}
    for name, settings in refs.items():
        for seed in seeds:
            config = ft.config_for_profile(profile, reorder="none", seed=seed, **settings)
            jobs.append((name, seed, config, ft.run_dir_for(config, root, f"divergence-{name}-seed{seed}"), False))
    for v in variants:
        for seed in seeds:
            config = ft.config_for_profile(profile, reorder="gps", seed=seed, gps=dict(v.gps), **v.finetune)
            run_dir = ft.run_dir_for(config, root, f"divergence-{v.name}-seed{seed}")
            jobs.append((v.name, seed, config, run_dir, v.reinit_gps))
    return jobs


def _xavier_load(load):
    def reinit(config, source):
        model, processor = load(config, source)
        model.reorder_gps.apply(model.reorder_gps._init_weights)
        return model, processor

    return reinit


def _run(job: tuple[ft.FinetuneConfig, str, bool]) -> float:
    """One run of the grid (in a worker process); its best validation loss."""
    config, run_dir, reinit_gps = job
    if reinit_gps:
        with mock.patch.object(ft, "_load_base", _xavier_load(ft._load_base)):
            ft.finetune(config, run_dir, progress=False)
    else:
        ft.finetune(config, run_dir, progress=False)
    return float(json.loads((Path(run_dir) / "done.json").read_text())["best_val_loss"])


def run_divergence_grid(profile: str, root: str | os.PathLike, variants: Sequence[Variant] = VARIANTS,
                        seeds: Sequence[int] = (0, 1, 2, 3, 4), workers: int | None = None) -> pd.DataFrame:
    """Train (or reuse) every variant x seed and its ``"none"`` runs; :func:`divergence_table` of them.

    The base models are built here first, so the worker processes only read them.
    """
    jobs = divergence_jobs(profile, root, variants, seeds)
    for base in sorted({config.base for _, _, config, _, _ in jobs}):
        ft.base_model_source(next(c for _, _, c, _, _ in jobs if c.base == base))
    losses = run_in_processes(_run, [(config, str(d), reinit) for _, _, config, d, reinit in jobs], workers)
    records = [{"name": name, "seed": seed, "best_val_loss": loss} for (name, seed, *_), loss in zip(jobs, losses)]
    return divergence_table(records, variants, {v.name: v.reference() for v in variants})


def divergence_table(records: Iterable[Mapping[str, Any]], variants: Sequence[Variant],
                     references: Mapping[str, str]) -> pd.DataFrame:
    """The :data:`COLUMNS` table: one row per variant and seed that has a reference run.

    ``records``: ``{"name", "seed", "best_val_loss"}`` per run; ``references``: variant name
    -> the record name of its ``"none"`` runs. ``ratio`` = gps / none; ``diverged``: ratio
    above :data:`DIVERGENCE_FACTOR`, or a non-finite gps loss. Raises ValueError naming a
    variant without a reference.
    """
    loss = {(r["name"], int(r["seed"])): float(r["best_val_loss"]) for r in records}
    rows = []
    for v in variants:
        if v.name not in references:
            raise ValueError(f"variant {v.name!r} has no reference 'none' runs in references={dict(references)!r}")
        for (name, seed), gps in sorted(loss.items(), key=lambda kv: kv[0][1]):
            none = loss.get((references[v.name], seed))
            if name != v.name or none is None:
                continue
            ratio = gps / none
            rows.append({"variant": v.name, "what_changed": v.what_changed, "seed": seed, "val_loss_gps": gps,
                         "val_loss_none": none, "ratio": ratio,
                         "diverged": bool(not math.isfinite(gps) or ratio > DIVERGENCE_FACTOR)})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_divergence_causes(folder: str | os.PathLike | None = None) -> tuple[pd.DataFrame | None, dict | None, str]:
    """The committed :data:`CSV` and its provenance (default folder: ``records/``).

    Returns ``(table, provenance, sentence)``; ``table`` and ``provenance`` are None when
    the files are not there, and ``sentence`` says so; else ``sentence`` says where the
    numbers come from (commit, script, profile) for the notebook to print.
    """
    folder = Path(folder) if folder is not None else records_dir()
    if not (folder / CSV).is_file() or not (folder / PROVENANCE_JSON).is_file():
        return None, None, (f"No record of the causes of GPS divergence: {folder.name}/{CSV} or "
                            f"{PROVENANCE_JSON} does not exist (benchmarks/gps_divergence_causes.py writes them).")
    table = pd.read_csv(folder / CSV)
    prov = json.loads((folder / PROVENANCE_JSON).read_text(encoding="utf-8"))
    commit = str(prov.get("git_commit") or "unknown")[:10]
    sentence = (f"Measured at commit {commit} by {prov.get('script')} ({prov.get('profile')} profile"
                f"{', smoke' if prov.get('smoke') else ''}): {len(table)} GPS runs of "
                f"{table['variant'].nunique()} variants, best validation loss against none's with the same seed.")
    if prov.get("note"):
        sentence += " " + prov["note"]
    return table, prov, sentence


def divergence_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant (in the table's order): what_changed, n_seeds, n_diverged, mean_ratio, max_ratio."""
    summary = table.groupby("variant", sort=False).agg(
        what_changed=("what_changed", "first"), n_seeds=("seed", "count"), n_diverged=("diverged", "sum"),
        mean_ratio=("ratio", "mean"), max_ratio=("ratio", "max"))
    summary["n_diverged"] = summary["n_diverged"].astype(int)
    return summary


def divergence_sentence(summary: pd.DataFrame) -> str:
    """Which variants of :func:`divergence_summary` diverged on how many seeds, and which never did."""
    bad = summary[summary["n_diverged"] > 0]
    fine = summary[summary["n_diverged"] == 0]
    if not len(bad):
        return (f"No variant diverged (validation loss above {DIVERGENCE_FACTOR}x none's) on any seed: "
                f"{', '.join(summary.index)}.")
    named = "; ".join(f"{name} ({r['what_changed']}): {r['n_diverged']} of {r['n_seeds']} seeds, "
                      f"worst ratio {r['max_ratio']:.2f}" for name, r in bad.iterrows())
    rest = f" None diverged with {', '.join(fine.index)}." if len(fine) else ""
    return f"Diverged (validation loss above {DIVERGENCE_FACTOR}x none's with the same seed): {named}.{rest}"
