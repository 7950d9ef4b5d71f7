"""Where the regenerated figures and tables go: :func:`savefig` and :func:`save_table`.

Every figure goes through :func:`savefig`, every table through
:func:`save_table` (Markdown, CSV and LaTeX). Files are written atomically
(:mod:`gpslib.atomic_files`), so an interrupted run never leaves a half-written file.

Target folder, in order of precedence:

1. ``$GPSLIB_FIGURES_DIR`` (``run_all.sh`` sets it to a per-notebook staging
   folder and moves the files into ``figures/`` only when the notebook
   succeeds, so a failing notebook never replaces good figures);
2. ``figures/`` at the repository root for the ``cpu`` and ``paper`` profiles;
3. ``runs/smoke/figures/`` for ``smoke``: a smoke run never writes into ``figures/``.

Both helpers return the file name relative to the target folder, so
notebook output never shows an absolute path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.figure
import pandas as pd

from gpslib.atomic_files import atomic_write, atomic_write_text
from gpslib.run_profiles import publishes_figures

__all__ = ["repo_root", "figures_dir", "savefig", "save_table"]


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml`` above this package), else the cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def figures_dir(profile: str) -> Path:
    """The folder a run in ``profile`` publishes into (created if absent)."""
    override = os.environ.get("GPSLIB_FIGURES_DIR")
    if override:
        out = Path(override)
    elif publishes_figures(profile):
        out = repo_root() / "figures"
    else:
        out = repo_root() / "runs" / profile / "figures"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"figure/table name must be a plain file stem; got name={name!r}")


def savefig(fig: matplotlib.figure.Figure, name: str, profile: str, dpi: int = 120) -> str:
    """Save ``fig`` as ``<figures_dir(profile)>/<name>.png`` atomically; returns ``"<name>.png"``."""
    _check_name(name)
    path = figures_dir(profile) / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return path.name


def save_table(df: pd.DataFrame, name: str, profile: str, float_format: str = "{:.4f}") -> list[str]:
    """Write ``df`` as ``<name>.md``, ``<name>.csv`` and ``<name>.tex`` atomically.

    Floats are rounded by ``float_format`` in Markdown and LaTeX, and NaN (a cell with
    no value, e.g. an epoch the run did not train) shows as "—"; the CSV keeps full
    precision and empty cells. Returns the three file names.
    """
    _check_name(name)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"save_table needs a pandas DataFrame; got {type(df).__name__}")
    out = figures_dir(profile)

    def fmt(x):
        if isinstance(x, float):
            return "—" if math.isnan(x) else float_format.format(x)  # a missing value, not a number
        return x

    shown = df.map(fmt)
    texts = {
        f"{name}.md": shown.to_markdown(disable_numparse=True) + "\n",
        f"{name}.csv": df.to_csv(),
        f"{name}.tex": shown.to_latex(),
    }
    for file_name, text in texts.items():
        atomic_write_text(out / file_name, text)
    return list(texts)
