"""Where the regenerated figures and tables go: :func:`savefig` and :func:`save_table`.

Every figure goes through :func:`savefig` (PNG and PDF), every table through
:func:`save_table` (Markdown, CSV and LaTeX; the LaTeX is escaped by :func:`latex_escape`
and compiles with pdflatex and ``\\usepackage{booktabs}``). Files are written atomically
(:mod:`gpslib.atomic_files`), so an interrupted run never leaves a half-written file.

Target folder, in order of precedence:

1. ``$GPSLIB_FIGURES_DIR`` (``run_all.sh`` sets it to a per-notebook staging
   folder and moves the files into ``figures/`` only when the notebook
   succeeds, so a failing notebook never replaces good figures);
2. ``figures/`` at the repository root for the ``cpu`` and ``paper`` profiles;
3. ``runs/smoke/figures/`` for ``smoke``: a smoke run never writes into ``figures/``.

Both helpers return the file name relative to the target folder, so
notebook output never shows an absolute path.

What produced each published file is recorded by :mod:`gpslib.manifest`.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path

import matplotlib.figure
import pandas as pd

from gpslib.atomic_files import atomic_write, atomic_write_text
from gpslib.run_profiles import publishes_figures

__all__ = ["repo_root", "figures_dir", "savefig", "save_table", "latex_escape"]


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
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` in ``figures_dir(profile)`` atomically.

    The PDF (vector, for the paper) carries no creation date, so an unchanged figure gives
    identical bytes. Returns ``"<name>.png"`` (what the notebooks print).
    """
    _check_name(name)
    out = figures_dir(profile)
    atomic_write(out / f"{name}.pdf", lambda tmp: fig.savefig(
        tmp, bbox_inches="tight", format="pdf", metadata={"CreationDate": None}))
    atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return f"{name}.png"


# LaTeX for every character a table may hold: the ten specials, the non-ASCII symbols the
# tables use (±, dashes, arrows), Greek letters and accented Latin ones. What is left
# (a CJK character, an emoji) shows as [U+XXXX] rather than break pdflatex.
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "$": r"\$",
    "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
_LATEX_SYMBOL = {
    "±": r"$\pm$", "—": "---", "–": "--", "→": r"$\rightarrow$", "←": r"$\leftarrow$",
    "↔": r"$\leftrightarrow$", "⇒": r"$\Rightarrow$", "×": r"$\times$", "·": r"$\cdot$",
    "−": "$-$", "≤": r"$\leq$", "≥": r"$\geq$", "≈": r"$\approx$", "≠": r"$\neq$",
    "∞": r"$\infty$", "√": r"$\surd$", "∑": r"$\sum$", "∈": r"$\in$", "°": r"$^\circ$",
    "µ": r"$\mu$", "¹": "$^1$", "²": "$^2$", "³": "$^3$", "½": r"$\frac12$", "…": r"\ldots{}",
    "“": "``", "”": "''", "‘": "`", "’": "'", "«": "<<", "»": ">>", "\u00a0": "~",
    "ß": r"\ss{}", "æ": r"\ae{}", "Æ": r"\AE{}", "ø": r"\o{}", "Ø": r"\O{}", "œ": r"\oe{}",
    "Œ": r"\OE{}", "ł": r"\l{}", "Ł": r"\L{}", "ı": r"\i{}", "€": "EUR", "£": r"\pounds{}",
    "§": r"\S{}", "©": r"\copyright{}", "•": r"$\bullet$", "✓": r"$\surd$",
}
_LATEX_ACCENT = {  # combining mark -> accent command (those the default OT1 font encoding has)
    "\u0300": "`", "\u0301": "'", "\u0302": "^", "\u0303": "~", "\u0304": "=", "\u0306": "u",
    "\u0307": ".", "\u0308": '"', "\u030a": "r", "\u030b": "H", "\u030c": "v", "\u0327": "c",
}
_MARKS_BELOW = {"\u0327"}  # above any other mark, i and j lose their dot: \'{\i}
# Greek capitals LaTeX has no command for look like Latin ones
_GREEK_CAPITAL_AS_LATIN = {"alpha": "A", "beta": "B", "epsilon": "E", "zeta": "Z", "eta": "H", "iota": "I",
                           "kappa": "K", "mu": "M", "nu": "N", "omicron": "O", "rho": "P", "tau": "T", "chi": "X"}


def _latex_char(ch: str) -> str:
    if ch in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[ch]
    if ch in _LATEX_SYMBOL:
        return _LATEX_SYMBOL[ch]
    if ch.isascii():
        return ch if ch.isprintable() else " "
    greek = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (\w+)", unicodedata.name(ch, ""))
    if greek:
        letter = {"lamda": "lambda"}.get(greek[2].lower(), greek[2].lower())
        if greek[1] == "SMALL":
            return "o" if letter == "omicron" else rf"$\{letter}$"
        return _GREEK_CAPITAL_AS_LATIN.get(letter) or rf"$\{letter.capitalize()}$"
    base, *marks = unicodedata.normalize("NFD", ch)
    if marks and base.isascii() and base.isalpha():  # an accented Latin letter
        if not all(m in _LATEX_ACCENT for m in marks):
            return base  # an accent pdflatex's default font lacks: the plain letter
        out = rf"\{base}" if base in "ij" and not set(marks) <= _MARKS_BELOW else base
        for mark in marks:
            out = rf"\{_LATEX_ACCENT[mark]}{{{out}}}"
        return out
    if marks:  # e.g. a Greek letter with an accent
        return _latex_char(base)
    compat = unicodedata.normalize("NFKC", ch)  # ligatures, full-width letters, ...
    if compat != ch and compat.isascii():
        return latex_escape(compat)
    return f"[U+{ord(ch):04X}]"


def latex_escape(text: object) -> str:
    """``text`` (``str()`` of anything) as LaTeX that pdflatex typesets literally.

    Escapes ``\\ { } & % $ # _ ~ ^`` (and ``< > |``, which the default font misprints),
    writes ``±`` as ``$\\pm$``, ``—``/``–`` as ``---``/``--``, ``→`` as ``$\\rightarrow$``,
    Greek letters in math mode, accented letters with accent commands (``é`` -> ``\\'{e}``),
    and any other non-ASCII character as ``[U+XXXX]``. The result is pure ASCII.
    """
    return "".join(_latex_char(ch) for ch in str(text))


def _latex_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return index.map(lambda labels: tuple(latex_escape(x) for x in labels)).set_names(
            [None if n is None else latex_escape(n) for n in index.names])
    return index.map(latex_escape).rename(None if index.name is None else latex_escape(index.name))


def _to_latex(df: pd.DataFrame, shown: pd.DataFrame) -> str:
    """``shown`` (the formatted cells of ``df``) as a booktabs tabular; numeric columns of ``df`` right-aligned."""
    tex = shown.map(lambda x: "—" if pd.api.types.is_scalar(x) and pd.isna(x) else x).map(latex_escape)
    tex.index, tex.columns = _latex_index(shown.index), _latex_index(shown.columns)
    align = "l" * df.index.nlevels + "".join(
        "r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in df.dtypes)
    # booktabs rules (\toprule, \midrule, \bottomrule); no \multirow, which needs a package of its own
    return tex.to_latex(escape=False, multirow=False, column_format=align)


def save_table(df: pd.DataFrame, name: str, profile: str, float_format: str = "{:.4f}") -> list[str]:
    """Write ``df`` as ``<name>.md``, ``<name>.csv`` and ``<name>.tex`` atomically.

    Floats are rounded by ``float_format`` in Markdown and LaTeX, and NaN (a cell with
    no value, e.g. an epoch the run did not train) shows as "—"; the CSV keeps full
    precision and empty cells. The LaTeX is a booktabs ``tabular`` with every cell and
    label escaped by :func:`latex_escape`. Returns the three file names.
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
        f"{name}.tex": _to_latex(df, shown),
    }
    for file_name, text in texts.items():
        atomic_write_text(out / file_name, text)
    return list(texts)
