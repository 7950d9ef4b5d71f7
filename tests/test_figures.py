"""Properties of gpslib.figures: where figures and tables go, atomic writes, LaTeX that compiles,
the manifest of a publish folder and the report."""

import hashlib
import json
import os
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gpslib import atomic_files, figures, provenance  # noqa: E402
from gpslib.run_profiles import SETTINGS  # noqa: E402


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv("GPSLIB_FIGURES_DIR", raising=False)


def test_smoke_profile_never_targets_the_figures_folder(no_override):
    target = figures.figures_dir("smoke")
    assert target == figures.repo_root() / "runs" / "smoke" / "figures"
    assert figures.figures_dir("cpu") == figures.repo_root() / "figures"


def test_environment_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path / "stage"))
    assert figures.figures_dir("cpu") == tmp_path / "stage"


def test_save_table_writes_markdown_csv_and_latex(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    df = pd.DataFrame({"paper": [1.4], "ours": [1.50197]}, index=["no_rope"])
    names = figures.save_table(df, "table_x", "cpu")
    assert names == ["table_x.md", "table_x.csv", "table_x.tex"]
    assert "1.5020" in (tmp_path / "table_x.md").read_text()
    assert "1.50197" in (tmp_path / "table_x.csv").read_text()
    tex = (tmp_path / "table_x.tex").read_text()
    assert "\\begin{tabular}" in tex and "no\\_rope" in tex
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_values_show_as_a_dash_not_nan(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    figures.save_table(pd.DataFrame({"ours": [0.5, float("nan")]}, index=[1, 2]), "t", "cpu")
    markdown = (tmp_path / "t.md").read_text()
    assert "—" in markdown and "nan" not in markdown


def test_savefig_writes_png_and_pdf_and_returns_only_the_png_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert figures.savefig(fig, "fig_x", "cpu") == "fig_x.png"
    plt.close(fig)
    assert (tmp_path / "fig_x.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig_x.pdf").read_bytes()[:5] == b"%PDF-"
    for name in ("fig_x.png", "fig_x.pdf"):
        assert (tmp_path / name).stat().st_mode & 0o044 == 0o044  # readable by group and others
    assert sorted(os.listdir(tmp_path)) == ["fig_x.pdf", "fig_x.png"]


def test_an_unchanged_figure_gives_identical_pdf_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    figures.savefig(fig, "fig_x", "cpu")
    first = (tmp_path / "fig_x.pdf").read_bytes()
    figures.savefig(fig, "fig_x", "cpu")
    plt.close(fig)
    assert (tmp_path / "fig_x.pdf").read_bytes() == first  # no creation date: the manifest's hash is stable


def test_failed_write_leaves_the_previous_file_untouched(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("good")

    def explode(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_files.atomic_write(target, explode)
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_names_raise_value_error_naming_the_value(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=repr(name).replace(".", r"\.")):
        figures.save_table(pd.DataFrame({"a": [1]}), name, "cpu")


def test_save_table_rejects_a_non_dataframe(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="dict"):
        figures.save_table({"a": 1}, "t", "cpu")


# --------------------------------------------------------------------------- LaTeX tables
ESCAPES = {  # every character LaTeX treats specially, and the non-ASCII ones the tables use
    "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "±": r"$\pm$", "—": "---", "–": "--", "→": r"$\rightarrow$", "×": r"$\times$", "≤": r"$\leq$",
    "α": r"$\alpha$", "τ": r"$\tau$", "Σ": r"$\Sigma$", "é": r"\'{e}", "ï": r'\"{\i}', "ß": r"\ss{}",
    "中": "[U+4E2D]",
}


@pytest.mark.parametrize("char, latex", list(ESCAPES.items()))
def test_latex_escape_writes_each_special_character_as_latex(char, latex):
    assert figures.latex_escape(f"a{char}b") == f"a{latex}b"


def test_latex_escape_does_not_escape_its_own_output_twice():
    assert figures.latex_escape("\\{}") == r"\textbackslash{}\{\}"
    assert figures.latex_escape("50% ± 1_000") == r"50\% $\pm$ 1\_000"


def _awkward_table():
    """Every special character in cells, row labels, column labels and index names; a MultiIndex; a NaN."""
    index = pd.MultiIndex.from_product([[0.1, 2.0], ["ours_log", "authors (clamped) 5%"]], names=["tau_x", "method#"])
    df = pd.DataFrame({"mean ± ci": ["0.5 ± 0.1", "a & b", "$5 {x} ~y^2 \\z", "α→β — é"],
                       "row_max": [0.25, float("nan"), 1.0, 2.5]}, index=index)
    return df


def test_latex_table_is_booktabs_and_every_special_character_is_escaped(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    figures.save_table(_awkward_table(), "t", "cpu")
    tex = (tmp_path / "t.tex").read_text()
    assert tex.isascii(), sorted({c for c in tex if not c.isascii()})
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{lllr}"  # two index levels, a text column, a numeric one right-aligned
    assert lines[1] == r"\toprule" and r"\midrule" in lines and lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert r"\multirow" not in tex and r"\cline" not in tex and r"\hline" not in tex  # booktabs rules only
    for expected in [r"tau\_x", r"method\#", r"ours\_log", r"authors (clamped) 5\%", r"mean $\pm$ ci",
                     r"0.5 $\pm$ 0.1", r"a \& b", r"\$5 \{x\} \textasciitilde{}y\textasciicircum{}2 \textbackslash{}z",
                     r"$\alpha$$\rightarrow$$\beta$ --- \'{e}", r"row\_max", "0.2500"]:
        assert expected in tex, expected
    assert not re.search(r"(?<!\\)[_%#]", tex)  # every _ % # escaped
    assert tex.count("{") == tex.count("}")
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert len(body) == 4
    for row in body:
        assert row.endswith(r" \\") and len(re.findall(r"(?<!\\)&", row)) == 3, row  # 4 cells: no stray &
    assert body[1].split(" & ")[-1] == r"--- \\"  # NaN: a dash, not "nan"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex here; the escaping is checked character by character")
def test_latex_table_compiles_with_pdflatex(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    figures.save_table(_awkward_table(), "t", "cpu")
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{t.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").exists()
