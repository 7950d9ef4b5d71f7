"""The GPU results of ``benchmarks/paper_size_gps.py`` (Figure 5 at the paper's size), if a run was committed.

That script trains GPS with the ``paper`` profile (N 800, d 2048, FFN 8192, 1000 steps) and
benchmarks Sinkhorn at N = 2048 on one CUDA GPU, and writes three files into ``figures/``:
:data:`HISTORY_CSV` (one row per training step), :data:`SINKHORN_CSV` (one row per N, tau
and implementation) and :data:`PROVENANCE_JSON` (git commit, device, torch version,
settings, wall times, date, and where a time budget stopped a part). Notebook 03 shows them
with :func:`load_paper_size_results`; no CPU profile can produce them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gpslib.figures import repo_root

__all__ = ["HISTORY_CSV", "PROVENANCE_JSON", "SINKHORN_CSV", "load_paper_size_results"]

HISTORY_CSV = "gps_paper_profile_history.csv"
SINKHORN_CSV = "sinkhorn_paper_size.csv"
PROVENANCE_JSON = "gps_paper_size_provenance.json"
SCRIPT = "benchmarks/paper_size_gps.py"


def _describe(prov: dict) -> str:
    gps, sk = prov.get("gps") or {}, prov.get("sinkhorn") or {}
    commit = str(prov.get("git_commit") or "unknown")[:10]
    parts = [f"GPU results of {SCRIPT}: {prov.get('device_name')}, torch {prov.get('torch')}, "
             f"commit {commit}, {prov.get('date_utc')}, {prov.get('wall_s', float('nan')):.0f} s in all."]
    if gps:
        stop = " (stopped by the time budget)" if gps.get("stopped_by_budget") else ""
        parts.append(f"GPS paper profile: {gps.get('steps_done')} of {gps.get('steps_planned')} steps{stop}, "
                     f"last training accuracy {gps.get('final_accuracy', float('nan')):.3f}.")
    if sk:
        stop = f" (stopped by the time budget at {sk['stopped_at']})" if sk.get("stopped_at") else ""
        parts.append(f"Sinkhorn at N = {sk.get('sizes')}: {sk.get('rows')} rows{stop}.")
    return " ".join(parts)


def load_paper_size_results(folder: str | Path | None = None) -> tuple[dict | None, str]:
    """Load the committed GPU run of ``benchmarks/paper_size_gps.py``, if there is one.

    Args:
        folder: where the files are; default ``figures/`` at the repository root.

    Returns:
        ``(results, sentence)``. ``results`` is ``{"history": DataFrame or None, "sinkhorn":
        DataFrame or None, "provenance": dict}`` (the history one row per step: step, loss,
        tau, accuracy, valid_fraction, row_error, eval_*, step_s; the Sinkhorn table one row
        per N, tau and method), or None when no GPU run was committed (no provenance file, or
        one from a ``--smoke`` or non-CUDA run). ``sentence`` says which, plainly, for the
        notebook to print.
    """
    if folder is None:
        folder = repo_root() / "figures"
    folder = Path(folder)
    prov_path = folder / PROVENANCE_JSON
    if not prov_path.is_file():
        return None, (f"No GPU results at the paper's size: {folder.name}/{PROVENANCE_JSON} does not exist "
                      f"because no GPU run of {SCRIPT} was committed.")
    prov = json.loads(prov_path.read_text(encoding="utf-8"))
    if prov.get("smoke") or prov.get("device") != "cuda":
        return None, (f"No GPU results at the paper's size: {folder.name}/{PROVENANCE_JSON} comes from a "
                      f"{'smoke' if prov.get('smoke') else prov.get('device')} run, not a GPU run of {SCRIPT}.")
    results = {"provenance": prov, "history": None, "sinkhorn": None}
    for key, name in (("history", HISTORY_CSV), ("sinkhorn", SINKHORN_CSV)):
        if name in prov.get("files", {}) and (folder / name).is_file():
            results[key] = pd.read_csv(folder / name)
    return results, _describe(prov)
