"""The ``records/`` folder: measurements made outside the notebooks that notebooks read.

A record is a CSV (with a JSON of provenance where its script writes one) whose rows each say
the commit and the script that measured them: ``base_model_trials.csv`` (notebook 00,
:mod:`gpslib.base_model_trials`) and ``gps_divergence_causes.csv`` (notebook 05,
:mod:`gpslib.gps_divergence`). Unlike ``figures/``, nothing in ``./run_all.sh`` rewrites them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["records_dir"]


def records_dir() -> Path:
    """``<repository>/records`` (the repository: the folder holding ``pyproject.toml`` above this package)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise FileNotFoundError(f"gpslib is not inside its repository ({root} has no pyproject.toml), "
                                "so there is no records/ folder; pass a path explicitly")
    return root / "records"
