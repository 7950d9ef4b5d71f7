"""run_all.sh's failure path: a raising notebook stops the run and publishes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs run_all.sh in subprocesses


def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


WRITE = (
    "import pandas as pd\n"
    "from gpslib.figures import save_table\n"
    "save_table(pd.DataFrame({{'v': [{value}]}}), '{name}', profile)\n"
)


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("run_all.sh is exercised from its own .venv")
    tmp = tmp_path_factory.mktemp("runall")
    nbs, publish, runs = tmp / "notebooks", tmp / "figures", tmp / "runs"
    nbs.mkdir()
    publish.mkdir()
    (publish / "table_b.csv").write_text("good old table\n")
    _notebook(nbs / "01_ok.ipynb", WRITE.format(value=1, name="table_a"))
    _notebook(nbs / "02_fails.ipynb", WRITE.format(value=2, name="table_b"), "raise RuntimeError('boom')")
    _notebook(nbs / "03_never.ipynb", WRITE.format(value=3, name="table_c"))
    env = dict(os.environ, GPSLIB_NOTEBOOKS_DIR=str(nbs), GPSLIB_PUBLISH_DIR=str(publish), GPSLIB_RUNS_DIR=str(runs))
    proc = subprocess.run(
        [str(ROOT / "run_all.sh"), "--profile", "cpu"], env=env, capture_output=True, text=True, timeout=600
    )
    return proc, publish, runs


def test_a_raising_notebook_gives_a_nonzero_exit_naming_it(failing_run):
    proc, _, _ = failing_run
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "FAILED: 02_fails.ipynb" in proc.stderr


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


def test_interpreter_is_python_311():
    assert sys.version_info[:2] == (3, 11)
