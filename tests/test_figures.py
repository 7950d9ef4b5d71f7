"""Properties of gpslib.figures: where figures and tables go, and atomic writes."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gpslib import atomic_files, figures  # noqa: E402


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
    assert "\\begin{tabular}" in (tmp_path / "table_x.tex").read_text()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_values_show_as_a_dash_not_nan(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    figures.save_table(pd.DataFrame({"ours": [0.5, float("nan")]}, index=[1, 2]), "t", "cpu")
    markdown = (tmp_path / "t.md").read_text()
    assert "—" in markdown and "nan" not in markdown


def test_savefig_returns_only_the_file_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert figures.savefig(fig, "fig_x", "cpu") == "fig_x.png"
    plt.close(fig)
    assert (tmp_path / "fig_x.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig_x.png").stat().st_mode & 0o044 == 0o044  # readable by group and others


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
