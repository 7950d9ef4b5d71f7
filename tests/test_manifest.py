"""Properties of gpslib.manifest: the record of what produced each published file, and the report."""

import hashlib
import json
import os

import nbformat
import numpy as np
import pytest

from gpslib import manifest as mf
from gpslib import provenance
from gpslib.figures import repo_root
from gpslib.run_profiles import SETTINGS

ROOT = repo_root()


def _files(folder, **contents):
    folder.mkdir(exist_ok=True)
    for name, text in contents.items():
        (folder / name.replace("__", ".")).write_text(text)


def _run(notebook, finished, files):
    """The fields of a run record update_manifest reads."""
    return {"notebook": notebook, "finished_at": finished, "files": files}


def test_manifest_lists_each_file_with_its_hash_and_the_run_that_wrote_it(tmp_path):
    _files(tmp_path, a__png="A", b__csv="B")
    manifest = mf.update_manifest(tmp_path, _run("01_x.ipynb", "t1", ["a.png", "b.csv"]))
    assert manifest == mf.load_manifest(tmp_path)
    assert manifest["files"]["a.png"] == {"notebook": "01_x.ipynb", "run": "01_x.ipynb t1",
                                          "sha256": hashlib.sha256(b"A").hexdigest(), "bytes": 1}
    assert list(manifest["runs"]) == ["01_x.ipynb t1"]
    assert mf.check_manifest(tmp_path, require_notebook=True) == []
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_file_a_rerun_no_longer_writes_keeps_the_run_that_wrote_it(tmp_path):
    _files(tmp_path, a__png="A", b__csv="B")
    mf.update_manifest(tmp_path, _run("01_x.ipynb", "t1", ["a.png", "b.csv"]))
    _files(tmp_path, a__png="A2")
    manifest = mf.update_manifest(tmp_path, _run("01_x.ipynb", "t2", ["a.png"]))
    assert manifest["files"]["a.png"]["run"] == "01_x.ipynb t2"
    assert manifest["files"]["b.csv"]["run"] == "01_x.ipynb t1"
    assert sorted(manifest["runs"]) == ["01_x.ipynb t1", "01_x.ipynb t2"]
    (tmp_path / "b.csv").unlink()
    manifest = mf.update_manifest(tmp_path, _run("01_x.ipynb", "t3", ["a.png"]))
    assert sorted(manifest["files"]) == ["a.png"] and list(manifest["runs"]) == ["01_x.ipynb t3"]


def test_check_manifest_names_changed_unlisted_missing_and_unattributed_files(tmp_path):
    _files(tmp_path, old__csv="there before any manifest", a__png="A")
    mf.update_manifest(tmp_path, _run("01_x.ipynb", "t1", ["a.png"]))
    assert mf.load_manifest(tmp_path)["files"]["old.csv"]["notebook"] is None
    assert mf.check_manifest(tmp_path) == []
    assert mf.check_manifest(tmp_path, require_notebook=True) == [
        "old.csv: no notebook recorded as writing it (there before the manifest, or written by none now): "
        "rerun the notebook that writes it, or delete it"]
    _files(tmp_path, a__png="edited by hand", new__md="N")
    (tmp_path / "old.csv").unlink()
    problems = mf.check_manifest(tmp_path)
    assert [p.split(":")[0] for p in problems] == ["new.md", "old.csv", "a.png"], problems
    assert "changed since 01_x.ipynb wrote it" in problems[2]
    assert mf.check_manifest(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere' / 'manifest.json'} does not exist"]


def test_update_manifest_refuses_a_run_whose_files_are_absent(tmp_path):
    with pytest.raises(ValueError, match="missing.png"):
        mf.update_manifest(tmp_path, _run("01_x.ipynb", "t1", ["missing.png"]))


def test_manifest_entry_joins_file_and_run_and_names_an_unknown_file(tmp_path):
    _files(tmp_path, a__png="A")
    manifest = mf.update_manifest(tmp_path, {**_run("01_x.ipynb", "t1", ["a.png"]), "profile": "cpu"})
    entry = mf.manifest_entry(manifest, "a.png")
    assert entry["file"] == "a.png" and entry["profile"] == "cpu" and entry["sha256"] and "files" not in entry
    with pytest.raises(ValueError, match="'b.png'"):
        mf.manifest_entry(manifest, "b.png")


def test_record_adds_up_in_the_staging_folder_and_does_nothing_outside_run_all(tmp_path, monkeypatch):
    monkeypatch.delenv("GPSLIB_FIGURES_DIR", raising=False)
    assert mf.record(seeds={"numpy": 1}) is None and not list(tmp_path.iterdir())
    monkeypatch.setenv("GPSLIB_FIGURES_DIR", str(tmp_path))
    mf.record(seeds={"numpy": 1})
    mf.record(seeds={"shapes": 2}, note="x")
    assert json.loads((tmp_path / ".provenance.json").read_text()) == {"note": "x", "seeds": {"numpy": 1, "shapes": 2}}


def test_settings_sections_follow_the_notebook_and_the_gpslib_modules_it_imports():
    assert mf.settings_sections(["%matplotlib inline\nsettings = profile_settings('rope', profile)"]) == ["rope"]
    assert "pretrain" in mf.settings_sections(["from gpslib.pretrain import ensure_base_model"])
    assert mf.settings_sections(["x = profile_settings('no_such_section', p)", "not python ("]) == []


def _executed_notebook(path, profile="cpu"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("setup(profile, seed=7)\nsettings = profile_settings('gps', profile)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"profile={profile} seed=7 torch=2 threads=2\n")]
    nb.cells = [cell]
    nb.metadata["papermill"] = {"parameters": {"profile": profile}, "start_time": "2025-01-01T00:00:00+00:00",
                                "end_time": "2025-01-01T00:01:00+00:00", "duration": 60.04,
                                "input_path": str(ROOT / "notebooks" / path.name), "output_path": str(path)}
    nbformat.write(nb, path)


def test_run_record_reads_profile_seeds_settings_and_threads_from_the_executed_notebook(tmp_path):
    _executed_notebook(tmp_path / "03_x.ipynb")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / ".provenance.json").write_text('{"seeds": {"numpy": 100}, "device": {"cuda": "H200"}}')
    run = mf.run_record(tmp_path / "03_x.ipynb", ["b.png", "a.png"], staging=tmp_path / "stage")
    assert run["notebook"] == "03_x.ipynb" and run["profile"] == "cpu" and run["wall_time_s"] == 60.0
    assert run["settings"]["sections"] == ["gps"]
    assert run["settings"]["hash"] == provenance.settings_hash({"gps": SETTINGS["gps"]["cpu"]})
    assert run["seeds"]["setup"] == 7 and run["seeds"]["numpy"] == 100
    assert run["seeds"]["settings"]["gps.digits.seeds"] == SETTINGS["gps"]["cpu"]["digits"]["seeds"]
    assert run["device"]["torch_threads"] == 2 and run["device"]["cuda"] == "H200"
    assert run["files"] == ["a.png", "b.png"] and run["packages"]["numpy"] == np.__version__
    assert set(run["git"]) == {"commit", "dirty", "dirty_paths"}


def test_run_record_refuses_an_unknown_profile(tmp_path):
    _executed_notebook(tmp_path / "03_x.ipynb", profile="laptop")
    with pytest.raises(ValueError, match="'laptop'"):
        mf.run_record(tmp_path / "03_x.ipynb", [])


def test_the_report_keeps_the_notebook_with_its_run_and_indexes_it(tmp_path):
    _executed_notebook(tmp_path / "03_x.ipynb")
    run = {"notebook": "03_x.ipynb", "profile": "cpu", "finished_at": "2025-01-01T00:01:00+00:00",
           "wall_time_s": 75.0, "git": {"commit": "0123456789abcdef", "dirty": True}, "files": ["a.pdf", "a.png", "t.md"]}
    stored = mf.publish_report(tmp_path / "03_x.ipynb", tmp_path / "report", run, tmp_path / "figures")
    nb = nbformat.read(stored, as_version=4)
    assert nb.metadata["gpslib"] == run and nb.metadata["papermill"]["input_path"] == "notebooks/03_x.ipynb"
    index = (tmp_path / "report" / "index.md").read_text()
    assert ("| [03_x](03_x.ipynb) | cpu | `0123456789` (uncommitted changes) | 1 min 15 s | 2025-01-01T00:01:00 | "
            "a [pdf](../figures/a.pdf) [png](../figures/a.png)<br>t [md](../figures/t.md) |") in index


def test_the_readme_block_of_notebook_times_comes_from_the_report_and_leaves_the_rest(tmp_path):
    for name, seconds in (("00_a", 75.0), ("01_b", 3725.0)):
        _executed_notebook(tmp_path / f"{name}.ipynb")
        run = {"notebook": f"{name}.ipynb", "profile": "cpu", "finished_at": "2025-01-01T00:01:00+00:00",
               "wall_time_s": seconds, "git": {"commit": "0123456789abcdef"},
               "device": {"cpu_count": 2, "load_average_at_end": [1.5, 2.25, 3.0]}, "files": []}
        mf.publish_report(tmp_path / f"{name}.ipynb", tmp_path / "report", run, tmp_path / "figures")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- times:start -->\nold\n<!-- times:end -->\nafter\n")
    mf.update_readme_times(readme, tmp_path / "report")
    text = readme.read_text()
    assert text.startswith("before\n<!-- times:start -->") and text.endswith("<!-- times:end -->\nafter\n")
    assert "old" not in text and "2 CPU cores" in text
    assert "| 00_a | cpu | 1 min 15 s | 2025-01-01 00:01 | `0123456789` | 1.5 / 2.2 / 3.0 |" in text
    assert "| 01_b | cpu | 1 h 02 min |" in text and "| **all** | | **1 h 03 min** |" in text
    assert "sum of the rows" not in text  # one commit: the sum is one run's time


def test_the_readme_times_say_when_the_rows_come_from_runs_of_several_commits(tmp_path):
    for name, commit in (("00_a", "0123456789abcdef"), ("01_b", "fedcba9876543210")):
        _executed_notebook(tmp_path / f"{name}.ipynb")
        run = {"notebook": f"{name}.ipynb", "profile": "cpu", "finished_at": "2025-01-01T00:01:00+00:00",
               "wall_time_s": 60.0, "git": {"commit": commit}, "device": {"cpu_count": 2}, "files": []}
        mf.publish_report(tmp_path / f"{name}.ipynb", tmp_path / "report", run, tmp_path / "figures")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- times:start -->\n<!-- times:end -->\n")
    mf.update_readme_times(readme, tmp_path / "report")
    text = readme.read_text()
    assert "| **sum of the rows** (runs of 2 commits) | | **2 min 00 s** |" in text and "**all**" not in text
    assert "(`0123456789`, `fedcba9876`)" in text


def test_update_readme_times_names_the_missing_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="times:start"):
        mf.update_readme_times(readme, tmp_path / "report")


# The committed figures/ and figures/manifest.json (written by ./run_all.sh --profile cpu).
COMMITTED = ROOT / "figures"
needs_manifest = pytest.mark.skipif(
    not (COMMITTED / "manifest.json").exists(),
    reason="figures/manifest.json does not exist yet: the next full ./run_all.sh (cpu) writes it")


@needs_manifest
def test_the_committed_figures_are_those_their_manifest_lists_with_the_same_sha256():
    assert mf.check_manifest(COMMITTED) == []


@needs_manifest
def test_every_committed_figure_names_the_notebook_that_wrote_it():
    assert [p for p in mf.check_manifest(COMMITTED, require_notebook=True) if "no notebook recorded" in p] == []
