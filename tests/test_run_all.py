"""run_all.sh on fake notebooks: the failure path (a raising notebook stops the run and
publishes nothing), the manifest and the report of a successful run, live progress."""

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest

from conftest import WRITE, notebook
from gpslib.manifest import check_manifest, load_manifest, manifest_entry
from gpslib.provenance import settings_hash
from gpslib.run_profiles import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs run_all.sh in subprocesses


def _run_all(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """run_all.sh ARGS on the notebooks in tmp/notebooks; GPSLIB_* folders inside tmp unless ``env`` says otherwise."""
    folders = {"GPSLIB_NOTEBOOKS_DIR": tmp / "notebooks", "GPSLIB_PUBLISH_DIR": tmp / "figures",
               "GPSLIB_RUNS_DIR": tmp / "runs", "GPSLIB_REPORT_DIR": tmp / "report"}
    full_env = dict(os.environ, **{k: str(v) for k, v in folders.items()})
    full_env.update(env)
    full_env = {k: v for k, v in full_env.items() if v != ""}  # "" in env: unset
    return subprocess.run([str(ROOT / "run_all.sh"), *args], env=full_env, capture_output=True, text=True, timeout=600)


def _needs_venv():
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("run_all.sh is exercised from its own .venv")


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    _needs_venv()
    tmp = tmp_path_factory.mktemp("runall")
    nbs, publish, runs = tmp / "notebooks", tmp / "figures", tmp / "runs"
    nbs.mkdir()
    publish.mkdir()
    (publish / "table_b.csv").write_text("good old table\n")
    notebook(nbs / "01_ok.ipynb", WRITE.format(value=1, name="table_a"))
    notebook(nbs / "02_fails.ipynb", WRITE.format(value=2, name="table_b"), "raise RuntimeError('boom')")
    notebook(nbs / "03_never.ipynb", WRITE.format(value=3, name="table_c"))
    proc = _run_all(tmp, "--profile", "cpu", GPSLIB_REPORT_DIR="")  # unset: report/ beside the publish folder
    return proc, publish, runs


def test_a_raising_notebook_gives_a_nonzero_exit_naming_it(failing_run):
    proc, _, _ = failing_run
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "FAILED: 02_fails.ipynb" in proc.stderr
    assert "RuntimeError: boom" in proc.stderr  # the end of its log, not only a path to it


def test_the_failed_notebook_is_neither_in_the_manifest_nor_in_the_report(failing_run):
    _, publish, _ = failing_run
    manifest = load_manifest(publish)
    assert manifest["files"]["table_a.csv"]["notebook"] == "01_ok.ipynb"
    assert manifest["files"]["table_b.csv"]["notebook"] is None  # the old file, there before any manifest
    assert [r["notebook"] for r in manifest["runs"].values()] == ["01_ok.ipynb"]
    assert check_manifest(publish) == []
    assert sorted(p.name for p in (publish.parent / "report").iterdir()) == ["01_ok.ipynb", "index.md"]


def test_earlier_figures_are_published_and_the_failed_notebooks_are_not(failing_run):
    _, publish, _ = failing_run
    assert (publish / "table_a.csv").exists()
    assert (publish / "table_b.csv").read_text() == "good old table\n"
    assert not (publish / "table_b.md").exists()


def test_the_run_stops_at_the_first_failure(failing_run):
    _, publish, runs = failing_run
    assert not (publish / "table_c.csv").exists()
    assert not (runs / "cpu" / "03_never.ipynb").exists()
    assert (runs / "cpu" / "02_fails.ipynb").exists()


def test_unknown_profile_is_refused_by_name():
    proc = subprocess.run(
        [str(ROOT / "run_all.sh"), "--profile", "laptop"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2
    assert "'laptop'" in proc.stderr


def test_pyproject_environment_and_run_all_ask_for_the_same_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    assert "  - python=3.11\n" in (ROOT / "environment.yml").read_text()
    assert "sys.version_info[:2] == (3, 11)" in (ROOT / "run_all.sh").read_text()


# --------------------------------------------------------------------------- arguments, before the bootstrap
@pytest.fixture
def fake_root(tmp_path):
    """A copy of run_all.sh beside notebooks 01 and 03, with a PATH whose python3.11 / python3
    only leave a mark and fail: the bootstrap, if reached, stops at once, and the test sees it."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "run_all.sh").write_bytes((ROOT / "run_all.sh").read_bytes())
    (root / "run_all.sh").chmod(0o755)
    for name in ("01_first.ipynb", "03_third.ipynb"):
        notebook(root / "notebooks" / name, "pass")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3.11", "python3"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {tmp_path / 'bootstrapped'}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    return root


def _run_fake(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPSLIB_") and k != "PYTHON"}
    env["PATH"] = f"{root.parent / 'bin'}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run([str(root / "run_all.sh"), *args], env=env, capture_output=True, text=True, timeout=60)
    return proc, (root.parent / "bootstrapped").exists()


@pytest.mark.parametrize(
    "args, option",
    [(["--only"], "--only"), (["--profile"], "--profile"), (["--only", "--test"], "--only"),
     (["--profile", "--only", "03"], "--profile"), (["--only="], "--only"), (["--profile="], "--profile")],
)
def test_an_option_without_its_value_is_named_before_the_bootstrap(fake_root, args, option):
    proc, bootstrapped = _run_fake(fake_root, *args)
    assert proc.returncode == 2, proc.stderr
    assert f"run_all.sh: {option} needs a value" in proc.stderr
    assert not bootstrapped


def test_only_with_no_such_notebook_is_refused_before_the_bootstrap(fake_root):
    proc, bootstrapped = _run_fake(fake_root, "--only", "02")
    assert proc.returncode == 2, proc.stderr
    assert "--only 02: no notebook 02_*.ipynb" in proc.stderr and "present: 01 03" in proc.stderr
    assert not bootstrapped


def test_valid_arguments_reach_the_bootstrap(fake_root):
    proc, bootstrapped = _run_fake(fake_root, "--only", "03", "--profile", "smoke")
    assert bootstrapped and "Python 3.11 not found" in proc.stderr and proc.returncode == 1


# --------------------------------------------------------------------------- a run that succeeds
FIRST = [  # setup's seed, a settings section, a figure and a table, a recorded seed, a cell that runs for a while
    "from gpslib.runtime import setup\nfrom gpslib.run_profiles import profile_settings\n"
    "setup(profile, seed=3)\nsettings = profile_settings('rope', profile)",
    "# A markdown cell: no progress line of its own",
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport pandas as pd\n"
    "from gpslib.figures import save_table, savefig\nfrom gpslib.manifest import record\nfig, ax = plt.subplots()\nax.plot([0, 1])\n"
    "print(savefig(fig, 'fig_a', profile))\nprint(save_table(pd.DataFrame({'v_x': [1.5]}), 'table_a', profile))\n"
    "record(seeds={'numpy': 100})",
    "import time\nfor step in range(3):\n    print(f'step {step}', flush=True)\n    time.sleep(1.2)",
]


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    _needs_venv()
    tmp = tmp_path_factory.mktemp("published")
    (tmp / "notebooks").mkdir()
    notebook(tmp / "notebooks" / "01_first.ipynb", *FIRST)
    notebook(tmp / "notebooks" / "02_second.ipynb", WRITE.format(value=2, name="table_b"))
    proc = _run_all(tmp, "--profile", "cpu", GPSLIB_PROGRESS_EVERY="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, tmp


def test_every_published_file_is_in_the_manifest_with_its_sha256(published_run):
    _, tmp = published_run
    publish = tmp / "figures"
    manifest = json.loads((publish / "manifest.json").read_text())
    on_disk = sorted(p.name for p in publish.iterdir() if p.name != "manifest.json")
    assert on_disk == ["fig_a.pdf", "fig_a.png", "table_a.csv", "table_a.md", "table_a.tex",
                       "table_b.csv", "table_b.md", "table_b.tex"]  # no staging or temporary file published
    assert sorted(manifest["files"]) == on_disk
    for name in on_disk:
        assert manifest["files"][name]["sha256"] == hashlib.sha256((publish / name).read_bytes()).hexdigest(), name
    assert check_manifest(publish, require_notebook=True) == []


def test_the_manifest_says_how_each_file_was_made(published_run):
    _, tmp = published_run
    entry = manifest_entry(load_manifest(tmp / "figures"), "fig_a.pdf")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert entry["notebook"] == "01_first.ipynb" and entry["profile"] == "cpu"
    assert entry["git"]["commit"] == head and isinstance(entry["git"]["dirty"], bool)
    assert entry["settings"]["sections"] == ["rope"]
    assert entry["settings"]["hash"] == settings_hash({"rope": SETTINGS["rope"]["cpu"]})
    assert entry["seeds"]["setup"] == 3 and entry["seeds"]["numpy"] == 100  # setup's, and one record() added
    assert 0 < entry["wall_time_s"] < 600 and entry["finished_at"] > entry["started_at"]
    for package in ("torch", "transformers", "peft", "numpy"):
        assert entry["packages"][package] == importlib.metadata.version(package)
    assert entry["device"]["cpu"] and entry["device"]["torch_threads"] == 1 and entry["device"]["gpus"] == []
    assert manifest_entry(load_manifest(tmp / "figures"), "table_b.md")["notebook"] == "02_second.ipynb"


def test_each_executed_notebook_is_in_the_report_with_its_parameters(published_run):
    _, tmp = published_run
    report = tmp / "report"
    assert sorted(p.name for p in report.iterdir()) == ["01_first.ipynb", "02_second.ipynb", "index.md"]
    nb = nbformat.read(report / "01_first.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "cpu"' in injected[0].source
    assert nb.metadata["gpslib"]["files"] == ["fig_a.pdf", "fig_a.png", "table_a.csv", "table_a.md", "table_a.tex"]
    assert not Path(nb.metadata["papermill"]["input_path"]).is_absolute()  # no machine paths committed
    index = (report / "index.md").read_text()
    commit = nb.metadata["gpslib"]["git"]["commit"][:10]
    for name in ("01_first", "02_second"):
        row = next(line for line in index.splitlines() if line.startswith(f"| [{name}]({name}.ipynb)"))
        assert "| cpu |" in row and commit in row and re.search(r"\| \d+ s \|", row), row
    assert "fig_a [pdf](../figures/fig_a.pdf) [png](../figures/fig_a.png)" in index


def test_progress_shows_each_code_cell_and_a_long_cell_with_name_and_elapsed_time(published_run):
    proc, tmp = published_run
    lines = proc.stdout.splitlines()
    started = [line.strip() for line in lines if re.fullmatch(r"\s+\[01_first \d+:\d\d\] cell \d+/\d+", line)]
    assert [s.split()[-1] for s in started] == ["1/5", "2/5", "3/5", "4/5", "5/5"]  # the markdown cell has none
    running = [line for line in lines if re.match(r"\s+\[01_first \d+:\d\d\] cell 5/5 running for 0:0\d", line)]
    assert running and any("last output: step" in line for line in running), proc.stdout
    assert "step 2" in (tmp / "runs" / "cpu" / "01_first.log").read_text()  # the full log is kept


def test_a_smoke_run_keeps_its_manifest_in_runs_and_never_writes_the_report(tmp_path):
    _needs_venv()
    (tmp_path / "notebooks").mkdir()
    notebook(tmp_path / "notebooks" / "01_only.ipynb", WRITE.format(value=1, name="table_s"))
    proc = _run_all(tmp_path, "--profile", "smoke", GPSLIB_PUBLISH_DIR="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    smoke_figures = tmp_path / "runs" / "smoke" / "figures"
    assert load_manifest(smoke_figures)["files"]["table_s.csv"]["notebook"] == "01_only.ipynb"
    assert check_manifest(smoke_figures) == []
    assert not (tmp_path / "report").exists() and not (tmp_path / "figures").exists()
